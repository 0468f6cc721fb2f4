"""Where models come from and how they are read: locations (``source``), the user script's hooks
(``handlers``), CTranslate2 conversion (``convert``) and LoRA adapters (``adapters``)."""

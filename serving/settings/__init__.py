"""One typed settings object for the server, read from the environment (docs/configuration.md).

``fields`` declares every knob (variable, type, default, trade-off), ``loading`` reads them from
defaults, a config file, the environment and overrides, ``checks`` refuses settings that
contradict each other, ``doc`` renders them for people. Import from here.
"""

from serving.settings.fields import (
    ADMIN_TOKEN_MIN_LENGTH,
    ENV_NAMES,
    REPO_ROOT,
    SAGEMAKER_MODEL_DIR,
    Settings,
    SettingsError,
    knobs,
)
from serving.settings.loading import CONFIG_FILE_ENV, load_settings, load_settings_with_sources

__all__ = ["ADMIN_TOKEN_MIN_LENGTH", "CONFIG_FILE_ENV", "ENV_NAMES", "REPO_ROOT", "SAGEMAKER_MODEL_DIR", "Settings",
           "SettingsError", "knobs", "load_settings", "load_settings_with_sources"]

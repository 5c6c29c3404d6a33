"""Zoo configs, one JSON file per model. Installed as the package ``hybridzoo.zoo_configs`` (see pyproject.toml)."""

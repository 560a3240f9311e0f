terraform {
  # `optional()` object attributes with defaults need 1.3; 1.5 for `check` blocks users may add.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # build_config.service_account and the function `url` attribute exist from 5.x; tested shapes are 6.x/7.x.
      version = ">= 6.0, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4"
    }
  }
}

# Installs pitstop into one project and lets it roll out one Cloud Run service, `web`.
#
#   pitstop package build/functions        # from the repository root (or python -m pitstop.package)
#   cd terraform/examples/basic
#   terraform init && terraform apply -var project_id=my-project

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4"
    }
  }
}

variable "project_id" {
  description = "Project to install pitstop into."
  type        = string
}

variable "region" {
  description = "Region of pitstop and of the web service."
  type        = string
  default     = "us-central1"
}

variable "source_dir" {
  description = "Bundle made by `pitstop package`; the default is build/functions at the repository root."
  type        = string
  default     = "../../../build/functions"
}

provider "google" {
  project = var.project_id
  region  = var.region
}

module "pitstop" {
  source = "../.."

  project_id = var.project_id
  region     = var.region
  source_dir = var.source_dir

  managed_services = [
    {
      name            = "web"
      service_account = "web-runtime@${var.project_id}.iam.gserviceaccount.com"
    },
  ]

  # Who may run `pitstop promote/pause/abort/...` (they publish to pitstop-commands).
  command_publishers = ["group:deployers@example.com"]
}

# If the project already has a `cloud-builds` topic, either set create_cloud_builds_topic = false
# in the module block above, or adopt the topic (import blocks only work in the root module):
#
# import {
#   to = module.pitstop.google_pubsub_topic.cloud_builds[0]
#   id = "projects/${var.project_id}/topics/cloud-builds"
# }

output "functions" {
  description = "Cloud Functions by entry point."
  value       = module.pitstop.function_names
}

output "notification_channel" {
  description = "Attach this channel to your own alert policies to make pitstop see their incidents."
  value       = module.pitstop.notification_channel
}

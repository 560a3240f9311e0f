# Installs pitstop into one project and lets it roll out one existing Cloud Run service.
# Prerequisites: the service (`managed_service`) and its runtime service account exist in the project
# (or in `managed_service.project`, if you set it: then you need IAM rights there too).
#
#   pitstop package build/functions        # from the repository root (or python -m pitstop.package)
#   cd terraform/examples/basic
#   terraform init && terraform apply -var project_id=my-project \
#     -var 'managed_service={name="web", service_account="web-runtime@my-project.iam.gserviceaccount.com"}' \
#     -var 'admins=["user:alice@example.com"]' -var 'api_invokers=["group:deployers@example.com"]'
#
# The audit log bucket is locked by default (irreversible): set audit_log_locked = false in the
# module block to try pitstop out first.

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

variable "managed_service" {
  description = "An existing Cloud Run service pitstop rolls out, its runtime service account, and optionally its project (default: project_id) and region (default: region)."
  type = object({
    name            = string
    service_account = string
    project         = optional(string)
    location        = optional(string)
  })
}

variable "command_publishers" {
  description = "Members allowed to send operator commands (`pitstop promote/pause/abort`), e.g. [\"group:deployers@example.com\"]."
  type        = list(string)
  default     = []
}

variable "api_invokers" {
  description = "Members allowed to call the pitstop API, i.e. to use the CLI (run.invoker on pitstop-api), e.g. [\"group:deployers@example.com\"]."
  type        = list(string)
  default     = []
}

variable "admins" {
  description = "Bootstrap pitstop admins (user:, serviceAccount: or domain:), who write the first access document."
  type        = list(string)
  default     = []
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

  managed_services = [var.managed_service]

  # Releases run a service through environments in projects of their own: list it once per project
  # and region. Staging in acme-staging, production in acme-prod in three regions:
  #
  # managed_services = concat(
  #   [{ name = "web", project = "acme-staging", location = "us-central1", service_account = "web-run@acme-staging.iam.gserviceaccount.com" }],
  #   [for region in ["us-central1", "europe-west1", "asia-northeast1"] :
  #     { name = "web", project = "acme-prod", location = region, service_account = "web-run@acme-prod.iam.gserviceaccount.com" }],
  # )

  # Release checks: the scan reads Artifact Analysis in the project of the images' Artifact Registry
  # repository (LOCATION-docker.pkg.dev/PROJECT/...), project_id unless set.
  # registry_project = "acme-artifacts"

  # Who may run `pitstop promote/pause/abort/...` (they publish to pitstop-commands).
  command_publishers = var.command_publishers

  # Who may call the API (the CLI), and who administers pitstop until an access document exists.
  api_invokers = var.api_invokers
  admins       = var.admins
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

output "api_url" {
  description = "URL of the pitstop API, for the CLI."
  value       = module.pitstop.api_url
}

output "notification_channel" {
  description = "Attach this channel to your own alert policies to make pitstop see their incidents."
  value       = module.pitstop.notification_channel
}

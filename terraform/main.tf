data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # Topic names are part of the code's contract (functions/main.py and pitstop publish to them by name).
  pitstop_topics = {
    health      = "pitstop-health"
    ticks       = "pitstop-ticks"
    alerts      = "pitstop-alerts"
    commands    = "pitstop-commands"
    events      = "pitstop-events"
    dead_letter = "pitstop-dead-letter"
  }

  # One entry per entry point in functions/main.py: the topic that feeds it, the topics it
  # publishes to, and whether it reads Cloud Monitoring. Everything per-function derives from this.
  functions = {
    on_build   = { topic = "cloud-builds", publishes = ["pitstop-events"], reads_metrics = false }
    on_health  = { topic = "pitstop-health", publishes = ["pitstop-events"], reads_metrics = false }
    on_tick    = { topic = "pitstop-ticks", publishes = ["pitstop-events", "pitstop-health"], reads_metrics = true }
    on_alert   = { topic = "pitstop-alerts", publishes = ["pitstop-events"], reads_metrics = false }
    on_command = { topic = "pitstop-commands", publishes = ["pitstop-events"], reads_metrics = false }
  }

  managed_services = { for s in var.managed_services : "${coalesce(s.location, var.region)}/${s.name}" => merge(s, { location = coalesce(s.location, var.region) }) }

  # Every function may deploy a revision (a tick re-applies a desired state that was not applied),
  # so each needs actAs on every runtime service account of the managed services.
  runtime_service_accounts = toset([for s in var.managed_services : s.service_account])

  pubsub_agent     = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  monitoring_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"

  apis = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "this" {
  for_each = var.enable_apis ? toset(local.apis) : toset([])

  project = var.project_id
  service = each.value
  # Other workloads in the project may use these APIs: never switch them off on destroy.
  disable_on_destroy = false
}

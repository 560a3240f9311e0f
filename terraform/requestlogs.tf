# The fresh error signal (issue #12): Cloud Run writes a request log entry per request within seconds,
# while Cloud Monitoring shows a minute about 180 s late. A Log Router sink in each project holding managed
# services exports their request logs to `pitstop-request-logs`: every 5xx, and a share
# `request_log_fraction` of the rest (sample(insertId, F)), so the volume stays bounded. The drain
# (on_drain) pulls that subscription every 5 s, only while a rollout is watched: on_tick arms a chain of
# Cloud Tasks named per 5 s slot (re-arming is idempotent) and a clearly failing canary window becomes a
# health sample. Pull, not push: push would be one invocation per entry with no window in memory.

locals {
  # Every project holding managed services -> the names of its services, for its sink's filter.
  request_log_services = {
    for p in local.check_projects : p => sort(distinct([for s in local.managed_services : s.name if s.project == p]))
  }
  # The drain's URL: a 2nd gen function also answers at this address, known before it exists (the tick's
  # environment names it, and the function's own environment may not name itself).
  drain_name = "pitstop-on-drain"
  drain_url  = "https://${var.region}-${var.project_id}.cloudfunctions.net/${local.drain_name}"
}

resource "google_logging_project_sink" "request_logs" {
  for_each = local.request_log_services

  project     = each.key
  name        = "pitstop-request-logs"
  description = "Cloud Run request logs of pitstop's managed services (every 5xx, a sample of the rest) to pitstop-request-logs."
  destination = "pubsub.googleapis.com/${google_pubsub_topic.pitstop["request_logs"].id}"
  filter = join(" AND ", [
    "logName = \"projects/${each.key}/logs/run.googleapis.com%2Frequests\"",
    "resource.type = \"cloud_run_revision\"",
    "resource.labels.service_name = (${join(" OR ", [for name in each.value : "\"${name}\""])})",
    "(httpRequest.status >= 500 OR sample(insertId, ${var.request_log_fraction}))",
  ])
  # Its own writer identity, granted publish on the topic below (the topic may be in another project).
  unique_writer_identity = true
}

resource "google_pubsub_topic_iam_member" "request_log_sink_publishes" {
  for_each = google_logging_project_sink.request_logs

  project = var.project_id
  topic   = google_pubsub_topic.pitstop["request_logs"].name
  role    = "roles/pubsub.publisher"
  member  = each.value.writer_identity
}

# The drain pulls this. Entries older than a window are worth nothing: short retention, and a backlog left
# while no rollout is watched is read past (its entries are too old to count) the next time one is.
resource "google_pubsub_subscription" "request_logs" {
  project = var.project_id
  name    = "pitstop-request-logs-drain"
  topic   = google_pubsub_topic.pitstop["request_logs"].id
  labels  = var.labels

  ack_deadline_seconds       = 60
  message_retention_duration = "600s"

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  # An entry that keeps failing the drain is set aside rather than pulled forever.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.pitstop["dead_letter"].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_pubsub_topic_iam_member.dead_letter_publisher]
}

resource "google_pubsub_subscription_iam_member" "request_logs_dead_letter" {
  project      = var.project_id
  subscription = google_pubsub_subscription.request_logs.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# The drain is the sampler's fast half: it signs its samples as pitstop's sampler (PITSTOP_SAMPLER_IDENTITY,
# on_tick's account), so it runs as that account, which on_health trusts; it needs nothing on_tick lacks but
# pulling the request logs.
resource "google_pubsub_subscription_iam_member" "drain_pulls" {
  project      = var.project_id
  subscription = google_pubsub_subscription.request_logs.name
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.function["on_tick"].member
}

resource "google_cloudfunctions2_function" "on_drain" {
  project     = var.project_id
  location    = var.region
  name        = local.drain_name
  description = "pitstop on_drain: Cloud Run request logs -> failing health samples, every 5 s while a rollout is watched"
  labels      = var.labels

  build_config {
    runtime         = var.runtime
    entry_point     = "on_drain"
    service_account = var.build_service_account == null ? null : "projects/${var.project_id}/serviceAccounts/${var.build_service_account}"

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.function["on_tick"].email
    timeout_seconds       = 30
    available_memory      = var.function_memory
    min_instance_count    = 0
    # One instance: the per-revision counts live in its memory, and one drain at a time reads the backlog.
    max_instance_count               = 1
    max_instance_request_concurrency = 1
    # Cloud Tasks of the same project counts as internal traffic.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true

    environment_variables = local.function_environment
  }

  depends_on = [google_project_service.this]
}

# Cloud Tasks calls the drain with an OIDC token of this account, which may only invoke it.
resource "google_service_account" "drain_invoker" {
  project      = var.project_id
  account_id   = "pitstop-drain-invoker"
  display_name = "pitstop drain invoker"
  description  = "Signs the Cloud Tasks calls of on_drain (run.invoker on it alone)."
}

resource "google_cloud_run_v2_service_iam_member" "drain_invoker" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.on_drain.name
  role     = "roles/run.invoker"
  member   = google_service_account.drain_invoker.member
}

resource "google_cloud_tasks_queue" "drain" {
  project  = var.project_id
  location = var.region
  name     = "pitstop-drain"

  # One slot at a time; a slot that fails is not retried: the next comes 5 s later.
  rate_limits {
    max_dispatches_per_second = 1
    max_concurrent_dispatches = 1
  }

  retry_config {
    max_attempts = 1
  }

  depends_on = [google_project_service.this]
}

# on_tick arms the chain: it creates the tasks, and names the invoker's identity in them.
resource "google_cloud_tasks_queue_iam_member" "tick_enqueues" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.drain.name
  role     = "roles/cloudtasks.enqueuer"
  member   = google_service_account.function["on_tick"].member
}

resource "google_service_account_iam_member" "tick_acts_as_drain_invoker" {
  service_account_id = google_service_account.drain_invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.function["on_tick"].member
}

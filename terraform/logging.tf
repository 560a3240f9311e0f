# The audit trail outside Firestore. Each audit event a function writes is also a structured log
# line carrying `event_hash` (the events are hash-chained); this sink copies exactly those lines to
# a log bucket whose retention is locked. Entries in a user-defined log bucket cannot be deleted,
# and once the bucket is locked it cannot be deleted before every entry has expired, nor its
# retention changed: an administrator who can rewrite Firestore cannot rewrite this copy.
resource "google_logging_project_bucket_config" "audit" {
  project        = var.project_id
  location       = var.audit_log_location
  bucket_id      = "pitstop-audit"
  description    = "pitstop audit events (hash-chained), routed by the pitstop-audit sink. Retention locked when audit_log_locked is true."
  retention_days = var.audit_log_retention_days
  # Irreversible: a locked bucket cannot be unlocked, and its retention cannot be changed.
  locked = var.audit_log_locked

  depends_on = [google_project_service.this]
}

# The functions run as Cloud Run services of the same name, so their stdout lands as
# cloud_run_revision entries; only audit lines carry jsonPayload.event_hash. A log bucket in the
# sink's own project needs no grant for the sink's writer identity (Cloud Logging writes there
# itself; the sink's writer_identity stays empty). unique_writer_identity = true is the provider's
# default since 5.0 and what any destination outside this project would need.
resource "google_logging_project_sink" "audit" {
  project                = var.project_id
  name                   = "pitstop-audit"
  description            = "pitstop audit events of the pitstop functions to the locked pitstop-audit log bucket."
  destination            = "logging.googleapis.com/projects/${var.project_id}/locations/${var.audit_log_location}/buckets/${google_logging_project_bucket_config.audit.bucket_id}"
  filter                 = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = (${join(" OR ", [for fn, name in local.function_name : "\"${name}\""])}) AND jsonPayload.event_hash:*"
  unique_writer_identity = true
}

output "function_names" {
  description = "Cloud Functions by entry point."
  value       = merge({ for k, f in google_cloudfunctions2_function.function : k => f.name }, { api = google_cloudfunctions2_function.api.name })
}

output "function_service_accounts" {
  description = "Runtime service account email of each function, by entry point."
  value       = { for k, sa in google_service_account.function : k => sa.email }
}

output "topics" {
  description = "Pub/Sub topic IDs by name (projects/P/topics/NAME)."
  value       = local.topic_ids
}

output "subscriptions" {
  description = "Push subscription feeding each function, by entry point."
  value       = { for k, s in google_pubsub_subscription.function : k => s.name }
}

output "dead_letter_subscription" {
  description = "Pull subscription holding messages no function could process."
  value       = google_pubsub_subscription.dead_letter.name
}

output "notification_channel" {
  description = "Monitoring notification channel to attach to your own alert policies so pitstop sees their incidents."
  value       = google_monitoring_notification_channel.alerts.id
}

output "notification_channels" {
  description = "pitstop's Monitoring notification channel in each project of managed_services (project_id included), by project: an alert policy can only use a channel of its own project."
  value       = local.alert_channels
}

output "source_object" {
  description = "gs:// URL of the deployed functions source archive."
  value       = "gs://${google_storage_bucket.source.name}/${google_storage_bucket_object.source.name}"
}

output "api_url" {
  description = "URL of the pitstop API (the api function's Cloud Run service). Callers need run.invoker (api_invokers) and send an ID token as Authorization: Bearer."
  value       = google_cloudfunctions2_function.api.service_config[0].uri
}

output "audit_log_bucket" {
  description = "Log bucket holding the audit events (projects/P/locations/L/buckets/pitstop-audit)."
  value       = google_logging_project_bucket_config.audit.id
}

# Cloud Monitoring incidents reach on_alert through pitstop-alerts.
resource "google_monitoring_notification_channel" "alerts" {
  project      = var.project_id
  display_name = "pitstop"
  description  = "Sends alert incidents to pitstop (topic pitstop-alerts), which treats them as health signals."
  type         = "pubsub"
  user_labels  = var.labels

  labels = {
    topic = google_pubsub_topic.pitstop["alerts"].id
  }

  depends_on = [google_project_service.this]
}

# An alert policy can only notify channels of its own project: each other project of
# managed_services gets the same channel, publishing to pitstop-alerts in project_id. (Its
# Monitoring API is not enabled by this module; a project running Cloud Run services has it.)
resource "google_monitoring_notification_channel" "alerts_in_service_projects" {
  for_each = local.service_projects

  project      = each.key
  display_name = "pitstop"
  description  = "Sends alert incidents to pitstop (topic pitstop-alerts in ${var.project_id}), which treats them as health signals."
  type         = "pubsub"
  user_labels  = var.labels

  labels = {
    topic = google_pubsub_topic.pitstop["alerts"].id
  }
}

locals {
  # The pitstop channel of each project that holds managed services (project_id included).
  alert_channels = merge(
    { for p, c in google_monitoring_notification_channel.alerts_in_service_projects : p => c.id },
    { (var.project_id) = google_monitoring_notification_channel.alerts.id },
  )
}

# Monitoring publishes as its notification service agent (one per project), which exists once the
# project has a Pub/Sub channel: hence the dependency on the channels. Authoritative: only those
# agents publish here. Incidents carry no signature (Monitoring cannot sign them) and can only roll
# back, never promote.
resource "google_pubsub_topic_iam_binding" "monitoring_publishes_alerts" {
  project = var.project_id
  topic   = google_pubsub_topic.pitstop["alerts"].name
  role    = "roles/pubsub.publisher"
  members = local.monitoring_agents

  depends_on = [
    google_monitoring_notification_channel.alerts,
    google_monitoring_notification_channel.alerts_in_service_projects,
  ]
}

# Example policy: 5xx ratio per revision of a managed service, in the service's project (where its
# metrics are). Grouping by revision makes the incident name the revision
# (resource.labels.revision_name), so pitstop can tell canary from stable.
resource "google_monitoring_alert_policy" "run_5xx_ratio" {
  for_each = { for key, svc in local.managed_services : key => svc if svc.alert_on_5xx }

  project      = each.value.project
  display_name = "${each.value.name} 5xx ratio"
  combiner     = "OR"
  severity     = "ERROR"
  # pitstop reads this label from the incident to find the service.
  user_labels = merge(var.labels, { service = each.value.name })

  conditions {
    display_name = "5xx ratio above ${var.alert_error_ratio}"

    condition_threshold {
      filter             = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${each.value.name}\" AND resource.labels.location = \"${each.value.location}\" AND metric.type = \"run.googleapis.com/request_count\" AND metric.labels.response_code_class = \"5xx\""
      denominator_filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${each.value.name}\" AND resource.labels.location = \"${each.value.location}\" AND metric.type = \"run.googleapis.com/request_count\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_error_ratio
      duration           = "60s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.revision_name"]
      }

      denominator_aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.revision_name"]
      }

      trigger {
        count = 1
      }
    }
  }

  notification_channels = [local.alert_channels[each.value.project]]

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "More than ${var.alert_error_ratio * 100}% of requests to a revision of `${each.value.name}` answered 5xx. pitstop rolls back an in-flight canary of this service when this fires."
  }
}

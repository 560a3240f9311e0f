resource "google_pubsub_topic" "pitstop" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for rollout events; they carry no customer data.
  for_each = local.pitstop_topics

  project = var.project_id
  name    = each.value
  labels  = var.labels

  depends_on = [google_project_service.this]
}

# Cloud Build publishes every build status change to `cloud-builds` (a fixed name) in the project
# where the build runs (build_project), once the topic exists. It may exist already: then set
# create_cloud_builds_topic = false, and we only look it up (or import it, see the README). Either
# way its publisher role is set authoritatively below.
resource "google_pubsub_topic" "cloud_builds" {
  #checkov:skip=CKV_GCP_83:Cloud Build publishes here with Google-managed encryption; the name and format are Cloud Build's.
  count = var.create_cloud_builds_topic ? 1 : 0

  project = local.build_project
  name    = "cloud-builds"
  labels  = var.labels

  depends_on = [google_project_service.this]
}

data "google_pubsub_topic" "cloud_builds" {
  count = var.create_cloud_builds_topic ? 0 : 1

  project = local.build_project
  name    = "cloud-builds"
}

locals {
  topic_ids = merge(
    { for t in google_pubsub_topic.pitstop : t.name => t.id },
    { "cloud-builds" = one(concat(google_pubsub_topic.cloud_builds[*].id, data.google_pubsub_topic.cloud_builds[*].id)) },
  )
}

# Why push subscriptions instead of `event_trigger` on the functions: Eventarc creates and owns the
# subscription behind a Pub/Sub trigger, so Terraform cannot give it a dead-letter policy, and a
# message that keeps failing is retried for up to 24 hours and then dropped. Our own
# push subscription to the function's URL has an explicit retry backoff and dead-letter topic, and it
# is the same delivery path the local stack uses (emulator push -> functions-framework -> CloudEvent).
resource "google_pubsub_subscription" "function" {
  for_each = local.functions

  project = var.project_id
  name    = "pitstop-${replace(each.key, "_", "-")}"
  topic   = local.topic_ids[each.value.topic]
  labels  = var.labels

  # For push delivery this is also the HTTP request timeout: match the function's timeout.
  ack_deadline_seconds       = var.function_timeout_seconds
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = google_cloudfunctions2_function.function[each.key].service_config[0].uri

    # The audience defaults to the push endpoint, the service's run.app URL Cloud Run expects.
    oidc_token {
      service_account_email = google_service_account.pusher.email
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.pitstop["dead_letter"].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  # The default policy deletes a subscription after 31 idle days; a quiet service must keep its wiring.
  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.pusher_invokes,
    google_pubsub_topic_iam_member.dead_letter_publisher,
  ]
}

# Messages published to a topic without subscriptions are lost: keep dead letters for inspection
# (`gcloud pubsub subscriptions pull pitstop-dead-letter`) and replay. Nothing consumes it, so it has
# no retry or dead-letter policy of its own.
resource "google_pubsub_subscription" "dead_letter" {
  project = var.project_id
  name    = "pitstop-dead-letter"
  topic   = google_pubsub_topic.pitstop["dead_letter"].id
  labels  = var.labels

  message_retention_duration = "604800s"
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it publishes to the dead-letter topic and
# acknowledges the message on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.pitstop["dead_letter"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = google_pubsub_subscription.function

  project      = var.project_id
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# Who may publish what pitstop acts on. Pub/Sub does not tell the subscriber who published, so the
# functions verify the sender anyway (Cloud Build API, ID tokens); these bindings keep everyone else
# from publishing on the topic itself. They are authoritative for roles/pubsub.publisher on the
# topic: a publisher granted there outside this module is removed on the next apply. Project-level
# grants (Owner, Editor, Pub/Sub Publisher or Admin on the project) still reach every topic.
locals {
  locked_topics = ["cloud-builds", "pitstop-commands", "pitstop-health", "pitstop-alerts"]

  # pitstop's own publishers of those topics, from `publishes` (on_tick sends the sampler's signed
  # health samples to pitstop-health).
  function_publishers = {
    for topic in local.locked_topics : topic => [
      for fn, f in local.identities : google_service_account.function[fn].member if contains(f.publishes, topic)
    ]
  }
}

# Only the Cloud Build service agent of build_project publishes build messages.
resource "google_pubsub_topic_iam_binding" "cloud_builds_publishers" {
  topic   = local.topic_ids["cloud-builds"]
  role    = "roles/pubsub.publisher"
  members = concat([local.cloudbuild_agent], local.function_publishers["cloud-builds"])

  # The service agent exists once the Cloud Build API is enabled.
  depends_on = [google_project_service.this]
}

# Operators' commands (promote, pause, abort, ...): only command_publishers.
resource "google_pubsub_topic_iam_binding" "command_publishers" {
  project = var.project_id
  topic   = google_pubsub_topic.pitstop["commands"].name
  role    = "roles/pubsub.publisher"
  members = distinct(concat(var.command_publishers, local.function_publishers["pitstop-commands"]))
}

# Health samples: external sources (probes, test suites) and pitstop's own sampler.
resource "google_pubsub_topic_iam_binding" "health_publishers" {
  project = var.project_id
  topic   = google_pubsub_topic.pitstop["health"].name
  role    = "roles/pubsub.publisher"
  members = distinct(concat(var.health_publishers, local.function_publishers["pitstop-health"]))
}

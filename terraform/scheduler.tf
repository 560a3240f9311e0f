# The heartbeat: every tick makes on_tick look for due rollouts (canary step due, health window
# closed, gate expired) and re-apply desired traffic that was never observed.
resource "google_cloud_scheduler_job" "tick" {
  project     = var.project_id
  region      = var.region
  name        = "pitstop-tick"
  description = "Publishes a tick to pitstop-ticks; on_tick finds rollouts whose deadline has passed."
  schedule    = var.tick_schedule
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.pitstop["ticks"].id
    # A push message without data is rejected by functions-framework (HTTP 400), so send a body.
    data = base64encode(jsonencode({ source = "cloud-scheduler", job = "pitstop-tick" }))
  }

  # A missed tick is harmless (the next one catches up on absolute deadlines): no retries.
  retry_config {
    retry_count = 0
  }

  depends_on = [google_project_service.this]
}

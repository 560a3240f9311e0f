resource "google_firestore_database" "this" {
  count = var.create_firestore_database ? 1 : 0

  project                           = var.project_id
  name                              = "(default)"
  location_id                       = coalesce(var.firestore_location, var.region)
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "OPTIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  # The audit trail lives here: protect it from an accidental destroy.
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"

  depends_on = [google_project_service.this]
}

locals {
  firestore_database = var.create_firestore_database ? google_firestore_database.this[0].name : "(default)"
}

# rollouts where service == S order by created_at desc (a service's history, the active rollout)
resource "google_firestore_index" "rollouts_by_service" {
  project    = var.project_id
  database   = local.firestore_database
  collection = "rollouts"

  fields {
    field_path = "service"
    order      = "ASCENDING"
  }
  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }
}

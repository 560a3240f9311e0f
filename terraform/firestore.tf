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

# releases where service == S order by created_at desc (a service's releases, newest first). The
# tick's `due_at <=` query has one field: Firestore's automatic single-field index serves it.
resource "google_firestore_index" "releases_by_service" {
  project    = var.project_id
  database   = local.firestore_database
  collection = "releases"

  fields {
    field_path = "service"
    order      = "ASCENDING"
  }
  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }
}

# Nobody but pitstop writes pitstop's state. IAM allow policies cannot take Editor's or Owner's
# datastore.* away, so an IAM deny policy denies entity writes (and the bulk paths that rewrite or
# erase entities) to every principal except pitstop's function identities. All of these permissions
# are in Google's list of permissions supported in deny policies. It covers every Firestore
# database in the project: give pitstop its own project, or set deny_firestore_writes = false.
# Reads stay allowed (the console, exports for inspection).
locals {
  firestore_write_permissions = [
    "datastore.googleapis.com/entities.create",
    "datastore.googleapis.com/entities.update",
    "datastore.googleapis.com/entities.delete",
    "datastore.googleapis.com/databases.import",
    "datastore.googleapis.com/databases.bulkDelete",
  ]
}

resource "google_iam_deny_policy" "firestore_writes" {
  count = var.deny_firestore_writes ? 1 : 0

  parent       = urlencode("cloudresourcemanager.googleapis.com/projects/${var.project_id}")
  name         = "pitstop-firestore-writes"
  display_name = "pitstop: only pitstop writes Firestore"

  rules {
    description = "Only pitstop's function service accounts create, update or delete Firestore documents; people go through the pitstop API."
    deny_rule {
      denied_principals    = ["principalSet://goog/public:all"]
      exception_principals = [for fn, sa in google_service_account.function : "principal://iam.googleapis.com/projects/-/serviceAccounts/${sa.email}"]
      denied_permissions   = local.firestore_write_permissions
    }
  }

  depends_on = [google_project_service.this]
}

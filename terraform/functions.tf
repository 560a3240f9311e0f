resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Access logs of a bucket that only holds build inputs add cost and no audit value; Cloud Audit Logs record writes.
  project                     = var.project_id
  name                        = coalesce(var.source_bucket_name, "${var.project_id}-pitstop-source")
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels

  # Keeps an overwritten or deleted source archive recoverable.
  versioning {
    enabled = true
  }

  depends_on = [google_project_service.this]
}

# The bundle directory comes from `pitstop package` (main.py, pitstop/ without CLI/local modules,
# requirements.txt). Zipping it here keeps one source of truth and makes the object name change
# exactly when the code does, which is what makes Terraform redeploy the functions.
data "archive_file" "source" {
  type             = "zip"
  source_dir       = var.source_dir
  output_path      = "${path.root}/.terraform/pitstop-functions-source.zip"
  output_file_mode = "0644"
  excludes         = ["**/__pycache__/**", "**/*.pyc"]
}

resource "google_storage_bucket_object" "source" {
  bucket = google_storage_bucket.source.name
  name   = "functions/pitstop-${data.archive_file.source.output_md5}.zip"
  source = data.archive_file.source.output_path
}

resource "google_service_account" "function" {
  for_each = local.identities

  project      = var.project_id
  account_id   = "pitstop-${replace(each.key, "_", "-")}"
  display_name = "pitstop ${each.key}"
  description  = "Runtime identity of the pitstop ${each.key} function (one per function, least privilege)."
}

# The identity Pub/Sub puts in the OIDC token of each push; it may only invoke the functions.
resource "google_service_account" "pusher" {
  project      = var.project_id
  account_id   = "pitstop-push"
  display_name = "pitstop Pub/Sub push"
  description  = "Signs Pub/Sub push requests to the pitstop functions."
}

resource "google_cloudfunctions2_function" "function" {
  for_each = local.functions

  project     = var.project_id
  location    = var.region
  name        = local.function_name[each.key]
  description = "pitstop ${each.key}: fed by topic ${each.value.topic}"
  labels      = var.labels

  build_config {
    runtime         = var.runtime
    entry_point     = each.key
    service_account = var.build_service_account == null ? null : "projects/${var.project_id}/serviceAccounts/${var.build_service_account}"

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.function[each.key].email
    timeout_seconds       = var.function_timeout_seconds
    available_memory      = var.function_memory
    min_instance_count    = 0
    max_instance_count    = var.max_instances
    # One event at a time per instance keeps Firestore write contention and memory predictable.
    max_instance_request_concurrency = 1
    # Only Pub/Sub push (internal to the project) reaches the functions; IAM is still enforced.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true

    environment_variables = local.function_environment
  }

  # No event_trigger: the functions are fed by the push subscriptions in pubsub.tf, which carry the
  # retry and dead-letter policies an Eventarc-managed subscription cannot.

  depends_on = [google_project_service.this]
}

# A 2nd gen function runs as a Cloud Run service of the same name; invoking it needs run.invoker there.
resource "google_cloud_run_v2_service_iam_member" "pusher_invokes" {
  for_each = google_cloudfunctions2_function.function

  project  = var.project_id
  location = var.region
  name     = each.value.name
  role     = "roles/run.invoker"
  member   = google_service_account.pusher.member
}

# The HTTP API of the CLI (status, commands, apply, deploy). Reachable from the internet but
# IAM-protected: Cloud Run rejects any request without an ID token of a principal that holds
# run.invoker on the service (api_invokers only), and the function then verifies the caller's own
# pitstop token and role. Same source, runtime and limits as the event-driven functions.
resource "google_cloudfunctions2_function" "api" {
  #checkov:skip=CKV_GCP_124:The CLI calls the API from operators' machines and CI, outside the VPC; run.invoker (api_invokers only) and the verified ID token guard it, not the network.
  project     = var.project_id
  location    = var.region
  name        = local.function_name["api"]
  description = "pitstop api: HTTP API of the pitstop CLI, IAM-protected"
  labels      = var.labels

  build_config {
    runtime         = var.runtime
    entry_point     = "api"
    service_account = var.build_service_account == null ? null : "projects/${var.project_id}/serviceAccounts/${var.build_service_account}"

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.function["api"].email
    timeout_seconds                  = var.function_timeout_seconds
    available_memory                 = var.function_memory
    min_instance_count               = 0
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true

    environment_variables = local.function_environment
  }

  depends_on = [google_project_service.this]
}

# A 2nd gen function is invoked through its Cloud Run service, which checks run.invoker there
# (roles/cloudfunctions.invoker on the function is not consulted for 2nd gen). Authoritative: the
# listed members are the only invokers; anyone granted run.invoker on this service elsewhere is
# removed on the next apply. Public members are rejected by the variable's validation.
resource "google_cloud_run_v2_service_iam_binding" "api_invokers" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.api.name
  role     = "roles/run.invoker"
  members  = var.api_invokers
}

# Projects created before April 2021 need this for Pub/Sub to mint the push OIDC token; scoped to
# the push identity only.
resource "google_service_account_iam_member" "pubsub_mints_push_tokens" {
  service_account_id = google_service_account.pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Least privilege, per function. No primitive role (owner/editor/viewer) is granted anywhere;
# tests/infra/test_terraform.py fails if one appears.

# Firestore permissions are project-wide (datastore.* has no per-collection IAM). Only pitstop's
# own function identities get a datastore role: people change state through the API (`pitstop
# apply` included), never by writing documents. firestore.tf denies writes to everyone else.
resource "google_project_iam_member" "function_firestore" {
  for_each = local.identities

  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.function[each.key].member
}

# Publisher only on the topics each function publishes to, granted on the topic itself. Topics
# whose publishers are set authoritatively (pubsub.tf) get their function publishers there instead:
# a binding and a member resource for the same role on one topic would undo each other.
resource "google_pubsub_topic_iam_member" "function_publishes" {
  for_each = merge([
    for fn, f in local.identities : {
      for topic in f.publishes : "${fn}/${topic}" => { function = fn, topic = topic } if !contains(local.locked_topics, topic)
    }
  ]...)

  project = var.project_id
  topic   = local.topic_ids[each.value.topic]
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function[each.value.function].member
}

# Only on_tick reads Cloud Monitoring (time series have no finer-grained IAM than the project).
resource "google_project_iam_member" "function_reads_metrics" {
  for_each = { for fn, f in local.identities : fn => f if f.reads_metrics }

  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = google_service_account.function[each.key].member
}

# A service's metrics are read in its own project (timeSeries.list on projects/PROJECT): the same
# grant in every other project of managed_services.
resource "google_project_iam_member" "function_reads_metrics_in_service_projects" {
  for_each = merge([
    for fn, f in local.identities : {
      for project in local.service_projects : "${fn}/${project}" => { function = fn, project = project }
    } if f.reads_metrics
  ]...)

  project = each.value.project
  role    = "roles/monitoring.viewer"
  member  = google_service_account.function[each.value.function].member
}

# Cloud Run: get/update on the managed services only, one binding per service and function, in the
# service's own project.
resource "google_cloud_run_v2_service_iam_member" "function_manages_service" {
  for_each = merge([
    for fn, f in local.identities : {
      for key, svc in local.managed_services : "${fn}/${key}" => { function = fn, service = svc }
    } if f.deploys
  ]...)

  project  = each.value.service.project
  location = each.value.service.location
  name     = each.value.service.name
  role     = "roles/run.developer"
  member   = google_service_account.function[each.value.function].member
}

# update_service returns a long-running operation; polling it (operations.get) is checked at the
# project level, where a service-level binding does not reach. This role holds only that permission.
resource "google_project_iam_custom_role" "run_operations_reader" {
  project     = var.project_id
  role_id     = "pitstopRunOperationsReader"
  title       = "pitstop: read Cloud Run operations"
  description = "Lets pitstop wait for the Cloud Run service updates it starts."
  permissions = ["run.operations.get"]
}

resource "google_project_iam_member" "function_reads_run_operations" {
  for_each = { for fn, f in local.identities : fn => f if f.deploys }

  project = var.project_id
  role    = google_project_iam_custom_role.run_operations_reader.name
  member  = google_service_account.function[each.key].member
}

# The operation of an update lives in the service's project, so the role is needed there too. A
# custom role belongs to one project (no organization needed): the same one-permission role is
# defined in each other project of managed_services and granted there. (roles/run.viewer would
# also do without a custom role, but it reads every service, revision and job of the project.)
resource "google_project_iam_custom_role" "run_operations_reader_in_service_projects" {
  for_each = local.service_projects

  project     = each.key
  role_id     = "pitstopRunOperationsReader"
  title       = "pitstop: read Cloud Run operations"
  description = "Lets pitstop wait for the Cloud Run service updates it starts."
  permissions = ["run.operations.get"]
}

resource "google_project_iam_member" "function_reads_run_operations_in_service_projects" {
  for_each = merge([
    for fn, f in local.identities : {
      for project in local.service_projects : "${fn}/${project}" => { function = fn, project = project }
    } if f.deploys
  ]...)

  project = each.value.project
  role    = google_project_iam_custom_role.run_operations_reader_in_service_projects[each.value.project].name
  member  = google_service_account.function[each.value.function].member
}

# Deploying a revision that runs as a service account requires actAs on that account, addressed in
# the project of the service that runs as it.
resource "google_service_account_iam_member" "function_acts_as_runtime" {
  for_each = merge([
    for fn, f in local.identities : {
      for key, sa in local.runtime_service_accounts : "${fn}/${key}" => { function = fn, service_account = sa }
    } if f.deploys
  ]...)

  service_account_id = "projects/${each.value.service_account.project}/serviceAccounts/${each.value.service_account.email}"
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.function[each.value.function].member
}

# Cloud Build, in the project where builds run: on_build reads builds (get_build confirms a build
# message against the API), api and on_command run a service's build trigger (deploy). Cloud Build
# has no per-trigger IAM, so this is project-level.
resource "google_project_iam_member" "function_cloud_build" {
  for_each = { for fn, f in local.identities : fn => f if f.build_role != null }

  project = local.build_project
  role    = each.value.build_role
  member  = google_service_account.function[each.key].member
}

# ---------------------------------------------------------------- release checks (issue #10)

# migrate, verify and e2e run as Cloud Run jobs in the environment's project and region, one job per
# release, check and attempt (`<service>-<check>-<hash>`, made while the release runs): there is no
# job to bind to beforehand, so the grant is project-level, in every project holding managed
# services. A custom role keeps it to the jobs calls pitstop makes (pitstop.gcp.jobs) instead of
# roles/run.developer on the project, which would also reach every service there. Job permissions:
# get/create/update (ensure the job's template), run (start its one execution), list and delete
# (find and clean up pitstop's per-release jobs), runWithOverrides (a run with per-run arguments);
# executions: list/get (the execution a job has, where it is), cancel (a second execution started by
# a racing caller is cancelled, so a migration runs once); run.operations.get polls the create,
# update and run operations. A job runs as the account its template names, and creating or
# updating it needs actAs on that account: function_acts_as_runtime grants it on the managed
# services' runtime accounts only, so a check job runs as its service's account or not at all.
resource "google_project_iam_custom_role" "check_jobs_runner" {
  for_each = local.check_projects

  project     = each.key
  role_id     = "pitstopCheckJobsRunner"
  title       = "pitstop: run release check jobs"
  description = "Lets pitstop create, run and follow the Cloud Run jobs of release checks (migrate, verify, e2e)."
  permissions = [
    "run.executions.cancel",
    "run.executions.get",
    "run.executions.list",
    "run.jobs.create",
    "run.jobs.delete",
    "run.jobs.get",
    "run.jobs.list",
    "run.jobs.run",
    "run.jobs.runWithOverrides",
    "run.jobs.update",
    "run.operations.get",
  ]
}

resource "google_project_iam_member" "function_runs_check_jobs" {
  for_each = merge([
    for fn, f in local.identities : {
      for project in local.check_projects : "${fn}/${project}" => { function = fn, project = project }
    } if f.runs_checks
  ]...)

  project = each.value.project
  role    = google_project_iam_custom_role.check_jobs_runner[each.value.project].name
  member  = google_service_account.function[each.value.function].member
}

# A job's output (what E2E tests print, their summary line) is read from Cloud Logging in the job's
# project (entries:list on projects/PROJECT, pitstop.gcp.jobs.ExecutionLogs). Log entries have no
# finer IAM than their project's log views: roles/logging.viewer there (not privateLogViewer: no
# Data Access audit logs).
resource "google_project_iam_member" "function_reads_check_logs" {
  for_each = merge([
    for fn, f in local.identities : {
      for project in local.check_projects : "${fn}/${project}" => { function = fn, project = project }
    } if f.runs_checks
  ]...)

  project = each.value.project
  role    = "roles/logging.viewer"
  member  = google_service_account.function[each.value.function].member
}

# The scan check reads the image's Artifact Analysis occurrences (discovery, vulnerabilities,
# attestations) in the project of its Artifact Registry repository. Occurrences are readable per
# project only; this role reads them and nothing else (not the notes' or the images' contents).
resource "google_project_iam_member" "function_reads_occurrences" {
  for_each = { for fn, f in local.identities : fn => f if f.runs_checks }

  project = local.registry_project
  role    = "roles/containeranalysis.occurrences.viewer"
  member  = google_service_account.function[each.key].member
}

# Notification sinks keep their credentials (webhook URLs, SMTP passwords, bot tokens) in Secret
# Manager. on_event may read exactly the secrets listed in var.notify_secrets, not every secret of the
# project: a sink naming another secret fails with a permission error that its delivery records.
resource "google_secret_manager_secret_iam_member" "on_event_reads_secret" {
  for_each = {
    for name in var.notify_secrets : name => {
      project = can(regex("^projects/", name)) ? split("/", name)[1] : var.project_id
      secret  = can(regex("^projects/", name)) ? split("/", name)[3] : name
    }
  }

  project   = each.value.project
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["on_event"].member
}

# `type: pubsub` sinks publish the event to a topic of your choice: on_event may publish to the topics
# listed in var.notify_topics, and to no other.
resource "google_pubsub_topic_iam_member" "on_event_publishes_to_sink" {
  for_each = toset(var.notify_topics)

  project = split("/", each.value)[1]
  topic   = split("/", each.value)[3]
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function["on_event"].member
}

data "google_project" "this" {
  project_id = var.project_id
}

data "google_project" "build" {
  project_id = local.build_project
}

# Projects of managed services other than project_id: their numbers name their service agents.
data "google_project" "service" {
  for_each = local.service_projects

  project_id = each.key
}

locals {
  # Topic names are part of the code's contract (functions/main.py and pitstop publish to them by name).
  pitstop_topics = {
    health      = "pitstop-health"
    ticks       = "pitstop-ticks"
    alerts      = "pitstop-alerts"
    commands    = "pitstop-commands"
    events      = "pitstop-events"
    dead_letter = "pitstop-dead-letter"
    # Cloud Run request logs of the managed services, from the sinks in requestlogs.tf; pulled by on_drain.
    request_logs = "pitstop-request-logs"
  }

  # One entry per entry point in functions/main.py and everything per-function derives from it:
  # the topic that feeds it, the topics it publishes to, whether it reads Cloud Monitoring, its
  # Cloud Build role in build_project (on_build confirms builds with get_build; on_command deploys
  # by running the service's build trigger), and whether it carries out release checks
  # (runs_checks: Cloud Run jobs and their output in the services' projects, Artifact Analysis in
  # registry_project). The release engine runs in every function: each input may advance a release
  # (a build starts one, a health sample or a tick ends a wave, a command or API call approves a
  # stage) and the next step may be a check, so all six carry checks out, as all six may deploy.
  functions = {
    on_build   = { topic = "cloud-builds", publishes = ["pitstop-events"], reads_metrics = false, build_role = "roles/cloudbuild.builds.viewer", runs_checks = true, deploys = true }
    on_health  = { topic = "pitstop-health", publishes = ["pitstop-events"], reads_metrics = false, build_role = null, runs_checks = true, deploys = true }
    on_tick    = { topic = "pitstop-ticks", publishes = ["pitstop-events", "pitstop-health"], reads_metrics = true, build_role = null, runs_checks = true, deploys = true }
    on_alert   = { topic = "pitstop-alerts", publishes = ["pitstop-events"], reads_metrics = false, build_role = null, runs_checks = true, deploys = true }
    on_command = { topic = "pitstop-commands", publishes = ["pitstop-events"], reads_metrics = false, build_role = "roles/cloudbuild.builds.editor", runs_checks = true, deploys = true }
    on_event   = { topic = "pitstop-events", publishes = [], reads_metrics = false, build_role = null, runs_checks = false, deploys = false }
  }

  # HTTP entry points (@functions_framework.http): no topic feeds them; callers need run.invoker.
  # `api` does what on_command does over HTTP, including POST /api/v1/deploy (a build trigger run).
  http_functions = {
    api = { topic = null, publishes = ["pitstop-events"], reads_metrics = false, build_role = "roles/cloudbuild.builds.editor", runs_checks = true, deploys = true }
  }

  # Every function, event-driven or HTTP: one runtime identity each, and the grants that go with it.
  identities    = merge(local.functions, local.http_functions)
  function_name = { for fn in keys(local.identities) : fn => "pitstop-${replace(fn, "_", "-")}" }

  # Where Cloud Build runs: on_build confirms builds there, api/on_command start them there, and
  # its Cloud Build service agent is the only publisher of its `cloud-builds` topic.
  build_project = coalesce(var.build_project, var.project_id)
  audience      = coalesce(var.audience, "pitstop:${var.project_id}")
  # Where Artifact Registry keeps the images, and Artifact Analysis their occurrences (the scan check).
  registry_project = coalesce(var.registry_project, var.project_id)

  # The same environment for every function: who may act is decided in the code from these.
  function_environment = {
    GOOGLE_CLOUD_PROJECT = var.project_id
    PITSTOP_REGION       = var.region
    PITSTOP_HEALTH_LAG   = tostring(var.health_lag_seconds)
    PITSTOP_EVENTS_TOPIC = local.pitstop_topics["events"]
    # Every ID token (commands, health samples, API calls) must carry this audience.
    PITSTOP_AUDIENCE = local.audience
    # Bootstrap admins: they may write the first project access document.
    PITSTOP_ADMINS = join(",", var.admins)
    # pitstop's own sampler signs its health samples as on_tick: the only sender of samples a spec
    # need not list.
    PITSTOP_SAMPLER_IDENTITY = google_service_account.function["on_tick"].email
    PITSTOP_BUILD_PROJECT    = local.build_project
    # Links in notifications (dashboard page, one-click actions); empty: messages carry no dashboard links.
    PITSTOP_DASHBOARD_URL = var.dashboard_url
    # The request-log drain (requestlogs.tf): the sinks' sample fraction, and the chain on_tick arms.
    PITSTOP_LOG_FRACTION  = tostring(var.request_log_fraction)
    PITSTOP_DRAIN_QUEUE   = google_cloud_tasks_queue.drain.id
    PITSTOP_DRAIN_URL     = local.drain_url
    PITSTOP_DRAIN_INVOKER = google_service_account.drain_invoker.email
  }

  # Managed services with their defaults filled in: project = project_id, location = region.
  # A service in project_id keeps the key it had before services could live in other projects
  # ("LOCATION/NAME"), so upgrading moves no binding and no alert policy; elsewhere the key is
  # "PROJECT/LOCATION/NAME" (three parts, never equal to a two-part key).
  managed_services = {
    for s in var.managed_services : (
      coalesce(s.project, var.project_id) == var.project_id
      ? "${coalesce(s.location, var.region)}/${s.name}"
      : "${s.project}/${coalesce(s.location, var.region)}/${s.name}"
    ) => merge(s, { project = coalesce(s.project, var.project_id), location = coalesce(s.location, var.region) })
  }

  # Projects other than project_id that hold managed services (releases: an environment's project).
  # pitstop's project-level grants (Cloud Run operations, Monitoring) are repeated in each of them.
  service_projects = toset([for s in local.managed_services : s.project if s.project != var.project_id])

  # Every project holding managed services, project_id included when a service runs there: a
  # release's checks run their Cloud Run jobs in the environment's project and read the jobs'
  # output from its Cloud Logging.
  check_projects = toset([for s in local.managed_services : s.project])

  # Every function may deploy a revision (a tick re-applies a desired state that was not applied),
  # so each needs actAs on every runtime service account of the managed services. The account is
  # addressed in its service's project (keyed by its email alone in project_id, as before).
  runtime_service_accounts = {
    for sa in distinct([for s in local.managed_services : { project = s.project, email = s.service_account }]) :
    (sa.project == var.project_id ? sa.email : "${sa.project}/${sa.email}") => sa
  }

  pubsub_agent     = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  monitoring_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
  # An alert policy notifies channels of its own project: each service project has a channel on
  # pitstop-alerts, so its Monitoring notification agent publishes there too.
  monitoring_agents = concat([local.monitoring_agent], [
    for p in local.service_projects : "serviceAccount:service-${data.google_project.service[p].number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
  ])
  # Publishes build status changes to `cloud-builds` in the project where the build runs.
  cloudbuild_agent = "serviceAccount:service-${data.google_project.build.number}@gcp-sa-cloudbuild.iam.gserviceaccount.com"

  apis = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",
    "containeranalysis.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "this" {
  for_each = var.enable_apis ? toset(local.apis) : toset([])

  project = var.project_id
  service = each.value
  # Other workloads in the project may use these APIs: never switch them off on destroy.
  disable_on_destroy = false
}

variable "project_id" {
  description = "Project that runs pitstop, and the default project of the Cloud Run services it manages."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits or hyphens), not a project number or name."
  }
}

variable "region" {
  description = "Region of the functions, the Scheduler job and the source bucket. Also passed to the functions as PITSTOP_REGION."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a single Google Cloud region such as us-central1 (not a multi-region)."
  }
}

variable "source_dir" {
  description = "Directory holding the functions' source bundle, made by `pitstop package DIR` (or `python -m pitstop.package DIR`): main.py, the pitstop package and requirements.txt at its root."
  type        = string

  validation {
    condition     = fileexists("${var.source_dir}/main.py") && fileexists("${var.source_dir}/requirements.txt")
    error_message = "source_dir must contain main.py and requirements.txt; run `pitstop package <source_dir>` first."
  }
}

variable "managed_services" {
  description = <<-EOT
    Cloud Run services pitstop may roll out. `name` is the service name, `project` the project it
    runs in (defaults to project_id; a release's environments usually have projects of their own),
    `location` its region (defaults to var.region), `service_account` the email of the service's
    runtime service account, addressed in the service's project (pitstop must act as it to create
    revisions), and `alert_on_5xx` whether to create the example 5xx-ratio alert policy for it (in
    the service's project). List a service once per project and region it runs in.
  EOT
  type = list(object({
    name            = string
    project         = optional(string)
    location        = optional(string)
    service_account = string
    alert_on_5xx    = optional(bool, true)
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.managed_services : can(regex("^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$", s.name))])
    error_message = "Each managed service name must be a Cloud Run service name: lowercase letters, digits and hyphens, starting with a letter, at most 49 characters."
  }

  validation {
    condition     = alltrue([for s in var.managed_services : can(regex("^[^@\\s]+@[^@\\s]+\\.gserviceaccount\\.com$", s.service_account))])
    error_message = "Each managed service's service_account must be a service account email (…@….gserviceaccount.com)."
  }

  validation {
    condition     = alltrue([for s in var.managed_services : s.project == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", s.project))])
    error_message = "Each managed service's project must be a project ID (6-30 lowercase letters, digits or hyphens), not a project number or name."
  }

  validation {
    condition     = length(distinct([for s in var.managed_services : "${coalesce(s.project, "-")}/${coalesce(s.location, "-")}/${s.name}"])) == length(var.managed_services)
    error_message = "managed_services lists the same service (project, location and name) twice."
  }
}

variable "runtime" {
  description = "Cloud Functions Python runtime."
  type        = string
  default     = "python312"

  validation {
    condition     = contains(["python311", "python312"], var.runtime)
    error_message = "runtime must be python311 or python312 (the versions pitstop is tested on)."
  }
}

variable "function_timeout_seconds" {
  description = "Timeout of each function. Also the subscriptions' ack deadline, so Pub/Sub does not redeliver a message the function is still working on."
  type        = number
  default     = 300

  validation {
    # 600 s is the largest ack deadline Pub/Sub accepts.
    condition     = var.function_timeout_seconds >= 10 && var.function_timeout_seconds <= 600
    error_message = "function_timeout_seconds must be between 10 and 600 (the Pub/Sub ack deadline limits)."
  }
}

variable "function_memory" {
  description = "Memory of each function instance (Cloud Functions syntax, e.g. 256M, 512M, 1Gi)."
  type        = string
  default     = "512M"

  validation {
    condition     = can(regex("^[0-9]+(M|Mi|G|Gi)$", var.function_memory))
    error_message = "function_memory must look like 256M, 512M, 1G or 1Gi."
  }
}

variable "max_instances" {
  description = "Upper bound on instances per function. Rollout decisions are serialised by Firestore transactions, so a small number is enough."
  type        = number
  default     = 5

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 100
    error_message = "max_instances must be between 1 and 100."
  }
}

variable "health_lag_seconds" {
  description = "How long Cloud Monitoring data may take to become visible; a health window is only judged after it (PITSTOP_HEALTH_LAG)."
  type        = number
  default     = 180

  validation {
    condition     = var.health_lag_seconds >= 0 && var.health_lag_seconds <= 900
    error_message = "health_lag_seconds must be between 0 and 900."
  }
}

variable "request_log_fraction" {
  description = "Share of the managed services' non-5xx request log entries the sinks export to pitstop-request-logs (sample(insertId, F)); every 5xx is exported. 0.1 suits ~100 req/s, 0.01 ~10,000 req/s."
  type        = number
  default     = 0.1

  validation {
    condition     = var.request_log_fraction > 0 && var.request_log_fraction <= 1
    error_message = "request_log_fraction must be above 0 and at most 1."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before Pub/Sub moves it to pitstop-dead-letter."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub limits)."
  }
}

variable "tick_schedule" {
  description = "Cron schedule (UTC) of the tick that finds due rollouts. Cloud Scheduler's resolution is one minute."
  type        = string
  default     = "* * * * *"

  validation {
    condition     = length(split(" ", trimspace(var.tick_schedule))) == 5
    error_message = "tick_schedule must be a five-field cron expression."
  }
}

variable "create_firestore_database" {
  description = "Create the (default) Firestore database in Native mode. Set false if the project already has one (it must be Native mode)."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Firestore location (e.g. nam5, eur3 or a region). Defaults to var.region. Only used when create_firestore_database is true."
  type        = string
  default     = null
}

variable "create_cloud_builds_topic" {
  description = "Create the `cloud-builds` topic Cloud Build publishes to. Set false when it already exists in the project (`gcloud pubsub topics describe cloud-builds`), or import it."
  type        = bool
  default     = true
}

variable "enable_apis" {
  description = "Enable the Google APIs pitstop needs. Set false when the project's APIs are managed elsewhere."
  type        = bool
  default     = true
}

variable "build_service_account" {
  description = "Email of the service account Cloud Build uses to build the functions. null uses the project default, which in projects created after mid-2024 may lack roles/cloudbuild.builds.builder."
  type        = string
  default     = null
}

variable "source_bucket_name" {
  description = "Name of the bucket holding the functions' source archive. Defaults to <project_id>-pitstop-source."
  type        = string
  default     = null
}

variable "command_publishers" {
  description = "IAM members (user:, group:, serviceAccount:, domain:) allowed to publish rollout commands (promote, pause, abort, ...) to pitstop-commands. Authoritative: they are the topic's only publishers. Each command still carries an ID token the function verifies."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.command_publishers : can(regex("^((user|group|serviceAccount|domain):[^\\s:]+|principal(Set)?://iam\\.googleapis\\.com/[^\\s]+)$", m))])
    error_message = "command_publishers must be IAM members such as user:alice@example.com or group:sre@example.com; allUsers and allAuthenticatedUsers are not allowed."
  }
}

variable "health_publishers" {
  description = "IAM members (probes, test suites) allowed to publish health samples to pitstop-health, besides pitstop's own sampler (on_tick). Authoritative: they are the topic's only publishers."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.health_publishers : can(regex("^((user|group|serviceAccount|domain):[^\\s:]+|principal(Set)?://iam\\.googleapis\\.com/[^\\s]+)$", m))])
    error_message = "health_publishers must be IAM members such as serviceAccount:probe@my-project.iam.gserviceaccount.com; allUsers and allAuthenticatedUsers are not allowed."
  }
}

variable "api_invokers" {
  description = "IAM members allowed to call the pitstop API (the CLI): roles/run.invoker on the api function's Cloud Run service, authoritative. What each caller may then do is decided by pitstop's roles (spec, access document, admins)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.api_invokers : can(regex("^((user|group|serviceAccount|domain):[^\\s:]+|principal(Set)?://iam\\.googleapis\\.com/[^\\s]+)$", m))])
    error_message = "api_invokers must be IAM members such as group:deployers@example.com; allUsers and allAuthenticatedUsers are not allowed (the API is never public)."
  }
}

variable "admins" {
  description = "Bootstrap pitstop admins (PITSTOP_ADMINS): members who may write the project access document and every spec. user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN; a group cannot be used, because an ID token does not say which groups its holder is in."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.admins : can(regex("^(user|serviceAccount):[^@\\s,]+@[^@\\s,]+$|^domain:[^@\\s,:]+$", m))])
    error_message = "admins must be user:EMAIL, serviceAccount:EMAIL or domain:DOMAIN (no group:, no commas)."
  }
}

variable "audience" {
  description = "Audience every ID token sent to pitstop must carry (PITSTOP_AUDIENCE); the CLI and pitstop's sampler mint tokens for it. null means pitstop:<project_id>."
  type        = string
  default     = null

  validation {
    condition     = var.audience == null || can(regex("^[^\\s,]+$", var.audience))
    error_message = "audience must be a single value without spaces or commas."
  }
}

variable "build_project" {
  description = "Project where Cloud Build builds the managed services (PITSTOP_BUILD_PROJECT): its `cloud-builds` topic feeds on_build, and the build roles are granted there. null means project_id."
  type        = string
  default     = null

  validation {
    condition     = var.build_project == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.build_project))
    error_message = "build_project must be a project ID (6-30 lowercase letters, digits or hyphens)."
  }
}

variable "registry_project" {
  description = "Project of the Artifact Registry repositories holding the managed services' images (the PROJECT of LOCATION-docker.pkg.dev/PROJECT/…): Artifact Analysis keeps their vulnerability and attestation occurrences there, which the scan check reads. null means project_id."
  type        = string
  default     = null

  validation {
    condition     = var.registry_project == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.registry_project))
    error_message = "registry_project must be a project ID (6-30 lowercase letters, digits or hyphens)."
  }
}

variable "deny_firestore_writes" {
  description = "Attach an IAM deny policy to the project so that only pitstop's function service accounts can create, update or delete Firestore documents (every database in the project). Needs roles/iam.denyAdmin, which Google grants on an organization only."
  type        = bool
  default     = true
}

variable "audit_log_retention_days" {
  description = "Days the pitstop-audit log bucket keeps audit events. Once the bucket is locked this cannot be changed: choose before the first apply."
  type        = number
  default     = 400

  validation {
    condition     = var.audit_log_retention_days >= 1 && var.audit_log_retention_days <= 3650
    error_message = "audit_log_retention_days must be between 1 and 3650 (Cloud Logging limits)."
  }
}

variable "audit_log_locked" {
  description = "Lock the pitstop-audit log bucket. IRREVERSIBLE: a locked bucket cannot be unlocked, deleted while it holds entries, or have its retention changed."
  type        = bool
  default     = true
}

variable "audit_log_location" {
  description = "Location of the pitstop-audit log bucket (global, or a Cloud Logging region such as us-central1). Cannot be changed after creation."
  type        = string
  default     = "global"
}

variable "alert_error_ratio" {
  description = "5xx ratio above which the example alert policy opens an incident (0.05 = 5 %)."
  type        = number
  default     = 0.05

  validation {
    condition     = var.alert_error_ratio > 0 && var.alert_error_ratio < 1
    error_message = "alert_error_ratio must be a fraction between 0 and 1."
  }
}

variable "dashboard_url" {
  description = "Base URL of the dashboard that notifications link to (release and rollout pages, one-click actions). The api function is IAM-protected, so a browser reaches it through `pitstop dashboard` (a proxy on the person's machine that adds their ID token, default http://127.0.0.1:8765/dashboard) or through an identity-aware proxy you put in front of it. Empty: no dashboard links."
  type        = string
  default     = "http://127.0.0.1:8765/dashboard"
}

variable "notify_secrets" {
  description = "Secret Manager secrets the notification sinks name (a name in project_id, or projects/P/secrets/S): on_event may read these and no other secret."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.notify_secrets : can(regex("^([A-Za-z0-9_-]{1,255}|projects/[^/]+/secrets/[A-Za-z0-9_-]{1,255})$", s))])
    error_message = "Each notify_secrets entry is a secret name (slack-hook) or projects/P/secrets/S."
  }
}

variable "notify_topics" {
  description = "Pub/Sub topics that `type: pubsub` sinks publish to (projects/P/topics/T): on_event may publish to these."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for t in var.notify_topics : can(regex("^projects/[^/]+/topics/[A-Za-z][A-Za-z0-9._~%+-]{2,254}$", t))])
    error_message = "Each notify_topics entry is a full topic name: projects/P/topics/T."
  }
}

variable "labels" {
  description = "Labels added to the resources that take labels."
  type        = map(string)
  default     = {}
}

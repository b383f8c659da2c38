variable "name" {
  type        = string
  description = "Name of the transfer; every AWS resource it creates is named `dth-<name>-…`. Changing it replaces the transfer."

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", var.name))
    error_message = "name must be 1-40 characters of a-z, 0-9 and -, beginning and ending with a letter or digit."
  }
}

# ---------------------------------------------------------------- source

variable "source_type" {
  type        = string
  default     = "registry"
  description = "`registry` (any registry: Docker Hub, quay.io, gcr.io, a private one) or `ecr` (Amazon ECR in another region or account). Changing it replaces the transfer."

  validation {
    condition     = contains(["registry", "ecr"], var.source_type)
    error_message = "source_type must be \"registry\" or \"ecr\"."
  }
}

variable "source_registry" {
  type        = string
  default     = null
  description = "The source registry (`host[:port]` or a URL); required for `registry`."
}

variable "source_region" {
  type        = string
  default     = null
  description = "`ecr`: the source registry's region. Default: the provider's region."
}

variable "images" {
  type        = list(string)
  default     = []
  description = "Images to copy: `repo:tag`, `repo` (`latest`), `repo@sha256:…` or `repo:ALL_TAGS`. Empty: every repository of the source with every tag."
}

variable "source_credentials_secret_arn" {
  type        = string
  default     = null
  description = "Secrets Manager secret with `{\"username\",\"password\"}` for the registry (or access keys for ECR in another account). Default: anonymous, or the instance role for `ecr`."
}

# ---------------------------------------------------------------- destination

variable "destination_prefix" {
  type        = string
  default     = ""
  description = "Prepended to every repository name at the destination (`<prefix>/<repository>`)."
}

# ---------------------------------------------------------------- operation

variable "schedule" {
  type        = string
  default     = "0 0 * * *"
  description = "When the finder looks for changed images: a 5-field cron expression (UTC), or `once`."
}

variable "workers_max" {
  type        = number
  default     = 20
  description = "Most worker instances."
}

variable "image" {
  type        = string
  default     = null
  description = "Container image with the `finder` and `worker` binaries. Default: the project's image for the provider's version."
}

variable "alarm_email" {
  type        = string
  default     = null
  description = "Email notified when jobs are dead-lettered."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags of every taggable resource."
}

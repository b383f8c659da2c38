variable "name" {
  type        = string
  description = "Name of the transfer; every AWS resource it creates is named `dth-<name>-…`. Changing it replaces the transfer."

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", var.name))
    error_message = "name must be 1-40 characters of a-z, 0-9 and -, beginning and ending with a letter or digit."
  }
}

# ---------------------------------------------------------------- source

variable "source_bucket" {
  type        = string
  description = "Bucket the objects are copied from. Changing it replaces the transfer."

  validation {
    condition     = length(trimspace(var.source_bucket)) > 0
    error_message = "source_bucket must not be empty."
  }
}

variable "source_prefix" {
  type        = string
  default     = ""
  description = "Copy only keys under this prefix. Empty: the whole bucket."
}

variable "source_region" {
  type        = string
  default     = null
  description = "Region of the source bucket (e.g. `cn-hangzhou` for Aliyun OSS). Default: the provider's region."
}

variable "source_type" {
  type        = string
  default     = "Amazon_S3"
  description = "Kind of source store: `Amazon_S3`, `Aliyun_OSS`, `Tencent_COS`, `Qiniu_Kodo` or `S3_Compatible` (needs `source_endpoint`). Changing it replaces the transfer."

  validation {
    condition     = contains(["Amazon_S3", "Aliyun_OSS", "Tencent_COS", "Qiniu_Kodo", "S3_Compatible"], var.source_type)
    error_message = "source_type must be one of Amazon_S3, Aliyun_OSS, Tencent_COS, Qiniu_Kodo, S3_Compatible."
  }
}

variable "source_endpoint" {
  type        = string
  default     = null
  description = "Endpoint URL of the source store. Default: derived from `source_type` and `source_region`."

  validation {
    condition     = var.source_endpoint == null || can(regex("^https?://", var.source_endpoint))
    error_message = "source_endpoint must be an http:// or https:// URL."
  }
}

variable "source_credentials_secret_arn" {
  type        = string
  default     = null
  description = "ARN of a Secrets Manager secret holding `{\"access_key_id\", \"secret_access_key\"}` for the source (other clouds, other accounts). Default: the instances' role. Only the ARN is stored in state."

  validation {
    condition     = var.source_credentials_secret_arn == null || can(regex("^arn:[^:]+:secretsmanager:", var.source_credentials_secret_arn))
    error_message = "source_credentials_secret_arn must be a Secrets Manager secret ARN (arn:aws:secretsmanager:...)."
  }
}

# ---------------------------------------------------------------- destination

variable "destination_bucket" {
  type        = string
  description = "Amazon S3 bucket the objects are copied to. Changing it replaces the transfer."

  validation {
    condition     = length(trimspace(var.destination_bucket)) > 0
    error_message = "destination_bucket must not be empty."
  }
}

variable "destination_prefix" {
  type        = string
  default     = ""
  description = "Prepended to every key at the destination (`<prefix>/<source key>`)."
}

variable "destination_storage_class" {
  type        = string
  default     = "INTELLIGENT_TIERING"
  description = "Storage class of the copies."

  validation {
    condition = contains([
      "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER", "GLACIER_IR", "DEEP_ARCHIVE",
      "REDUCED_REDUNDANCY",
    ], var.destination_storage_class)
    error_message = "destination_storage_class must be one of STANDARD, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER, GLACIER_IR, DEEP_ARCHIVE, REDUCED_REDUNDANCY."
  }
}

# ---------------------------------------------------------------- schedule and fleet

variable "schedule" {
  type        = string
  default     = "once"
  description = "When the finder runs: `once` (right after creation) or a 5-field cron expression in UTC, e.g. `0 3 * * *`."

  validation {
    condition     = var.schedule == "once" || length(regexall("[^ ]+", var.schedule)) == 5
    error_message = "schedule must be \"once\" or a cron expression of 5 fields (minute hour day-of-month month day-of-week)."
  }
}

variable "image" {
  type        = string
  description = "Container image holding the `finder` and `worker` binaries."

  validation {
    condition     = can(regex("^[^[:space:]]+$", var.image))
    error_message = "image must be an image reference without spaces."
  }
}

variable "workers_min" {
  type        = number
  default     = 1
  description = "Fewest worker instances (when the queue is empty)."

  validation {
    condition     = var.workers_min >= 0 && var.workers_min == floor(var.workers_min)
    error_message = "workers_min must be a whole number, 0 or more."
  }
}

variable "workers_desired" {
  type        = number
  default     = 1
  description = "Worker instances at creation; between `workers_min` and `workers_max`."

  validation {
    condition     = var.workers_desired >= 0 && var.workers_desired == floor(var.workers_desired)
    error_message = "workers_desired must be a whole number, 0 or more."
  }
}

variable "workers_max" {
  type        = number
  default     = 20
  description = "Most worker instances; the fleet scales out on the job queue's depth."

  validation {
    condition     = var.workers_max >= 1 && var.workers_max <= 1000 && var.workers_max == floor(var.workers_max)
    error_message = "workers_max must be a whole number between 1 and 1000."
  }
}

variable "worker_concurrency" {
  type        = number
  default     = 4
  description = "Objects (or parts) each worker copies at once."

  validation {
    condition     = var.worker_concurrency >= 1 && var.worker_concurrency <= 1024 && var.worker_concurrency == floor(var.worker_concurrency)
    error_message = "worker_concurrency must be a whole number between 1 and 1024."
  }
}

# ---------------------------------------------------------------- notifications and tags

variable "alarm_email" {
  type        = string
  default     = null
  description = "Email address notified (through SNS) when jobs are dead-lettered. Default: no notification."

  validation {
    condition     = var.alarm_email == null || can(regex("^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$", var.alarm_email))
    error_message = "alarm_email must be an email address."
  }
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags of every taggable AWS resource of the transfer, on top of the provider's `default_tags`."
}

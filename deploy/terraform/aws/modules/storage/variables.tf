variable "name" {
  description = "Name prefix of every resource; bucket names append the purpose and the account id."
  type        = string
}

variable "output_prefix" {
  description = "Key prefix of run output in the output bucket (ends with /)."
  type        = string
  default     = "runs/"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*/$", var.output_prefix))
    error_message = "output_prefix: lower-case letters, digits, '_' or '-', ending with '/'."
  }
}

variable "dlq_prefix" {
  description = "Key prefix of dead-letter records in the output bucket (ends with /)."
  type        = string
  default     = "dlq/"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]*/$", var.dlq_prefix))
    error_message = "dlq_prefix: lower-case letters, digits, '_' or '-', ending with '/'."
  }
}

variable "output_expiration_days" {
  description = "Days before run output under output_prefix expires."
  type        = number
  default     = 400

  validation {
    condition     = var.output_expiration_days > 30
    error_message = "output_expiration_days must exceed 30 (objects move to STANDARD_IA at 30 days)."
  }
}

variable "dlq_expiration_days" {
  description = "Days before dead-letter records under dlq_prefix expire."
  type        = number
  default     = 730

  validation {
    condition     = var.dlq_expiration_days > 30
    error_message = "dlq_expiration_days must exceed 30 (objects move to STANDARD_IA at 30 days)."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or deleted object version is kept (the undo window)."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_retention_days > 30
    error_message = "noncurrent_version_retention_days must exceed 30 (versions move to STANDARD_IA at 30 days)."
  }
}

variable "log_retention_days" {
  description = "Days access logs are kept in the logs bucket."
  type        = number
}

variable "alb_log_prefix" {
  description = "Key prefix of the load balancer's access logs in the logs bucket (no slashes at either end)."
  type        = string
  default     = "alb"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

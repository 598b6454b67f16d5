variable "name" {
  description = "Alias of the key, without the alias/ prefix (for example beam-etl-prod-logs)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9/_-]{1,200}$", var.name)) && !startswith(var.name, "aws/")
    error_message = "name: letters, digits, '/', '_' and '-' only, and not under the reserved aws/ prefix."
  }
}

variable "description" {
  description = "What the key encrypts (shown in the KMS console)."
  type        = string
}

variable "allow_cloudwatch_logs" {
  description = "Let CloudWatch Logs of this account and region use the key for log groups."
  type        = bool
  default     = false
}

variable "rotation_period_in_days" {
  description = "Days between automatic rotations of the key material."
  type        = number
  default     = 365

  validation {
    condition     = var.rotation_period_in_days >= 90 && var.rotation_period_in_days <= 2560
    error_message = "rotation_period_in_days must be between 90 and 2560 (the KMS limits)."
  }
}

variable "deletion_window_in_days" {
  description = "Waiting period before a scheduled key deletion takes effect."
  type        = number
  default     = 30

  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30
    error_message = "deletion_window_in_days must be between 7 and 30."
  }
}

variable "tags" {
  description = "Tags for the key."
  type        = map(string)
  default     = {}
}

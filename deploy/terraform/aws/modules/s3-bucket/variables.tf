variable "bucket" {
  description = "Globally unique bucket name."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket))
    error_message = "bucket must be a valid S3 bucket name (3 to 63 lower-case letters, digits, '.' and '-')."
  }
}

variable "kms_key_arn" {
  description = "CMK of the bucket's default encryption."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket that receives this bucket's server access logs."
  type        = string
}

variable "access_log_prefix" {
  description = "Key prefix of this bucket's access logs in access_log_bucket (ends with /)."
  type        = string
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or deleted object version is kept (the undo window); versions move to STANDARD_IA at 30 days."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_retention_days > 30
    error_message = "noncurrent_version_retention_days must exceed 30."
  }
}

variable "prefix_expiration_days" {
  description = "Key prefix -> days after which current objects under it expire (they move to STANDARD_IA at 30 days)."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for days in values(var.prefix_expiration_days) : days > 30])
    error_message = "prefix_expiration_days values must exceed 30."
  }
}

variable "tags" {
  description = "Tags for the bucket."
  type        = map(string)
  default     = {}
}

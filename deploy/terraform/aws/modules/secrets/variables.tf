variable "name" {
  description = "Name prefix of every resource; secrets are named NAME/master-key and NAME/secret-encryption."
  type        = string
}

variable "rotation_lambda_arns" {
  description = "Rotation hook: secret key (master-key or secret-encryption) -> ARN of its rotation Lambda function. Empty: no automatic rotation."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k, arn in var.rotation_lambda_arns :
      contains(["master-key", "secret-encryption"], k) && can(regex("^arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:.+$", arn))
    ])
    error_message = "rotation_lambda_arns: keys are master-key or secret-encryption, values Lambda function ARNs."
  }
}

variable "rotation_days" {
  description = "Days between automatic rotations where a rotation function is set."
  type        = number
  default     = 90

  validation {
    condition     = var.rotation_days >= 1 && var.rotation_days <= 365
    error_message = "rotation_days must be between 1 and 365."
  }
}

variable "recovery_window_in_days" {
  description = "Days a deleted secret can still be restored (0 deletes at once; 7 to 30 otherwise)."
  type        = number
  default     = 30

  validation {
    condition     = var.recovery_window_in_days == 0 || (var.recovery_window_in_days >= 7 && var.recovery_window_in_days <= 30)
    error_message = "recovery_window_in_days must be 0 or between 7 and 30."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "name" {
  description = "Name prefix of the repository's KMS key alias."
  type        = string
}

variable "repository_name" {
  description = "Name of the ECR repository."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$", var.repository_name))
    error_message = "repository_name must be a valid ECR repository name (lower case, digits, . _ - /)."
  }
}

variable "keep_images" {
  description = "Images kept in the repository; older ones expire."
  type        = number
  default     = 50

  validation {
    condition     = var.keep_images >= 5
    error_message = "keep_images must be at least 5 so that a rollback has images to go back to."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

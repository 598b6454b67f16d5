variable "name" {
  description = "Name prefix of every resource; the instance is NAME-state."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (two zones or more) for the DB subnet group."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids needs subnets in at least two availability zones."
  }
}

variable "client_security_group_ids" {
  description = "Security groups allowed to connect on 5432: a short label (api, worker) -> security group id."
  type        = map(string)
}

variable "engine_version" {
  description = "PostgreSQL version: a major version (16) lets RDS apply minor upgrades without a Terraform diff."
  type        = string
  default     = "16"

  validation {
    condition     = can(regex("^(1[4-9]|[2-9][0-9])(\\.[0-9]+)?$", var.engine_version))
    error_message = "engine_version must be PostgreSQL 14 or newer, as MAJOR or MAJOR.MINOR."
  }
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = startswith(var.instance_class, "db.")
    error_message = "instance_class must be an RDS class such as db.t4g.medium."
  }
}

variable "database_name" {
  description = "Database created on the instance for the state store."
  type        = string
  default     = "beam_etl"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database_name))
    error_message = "database_name: a lower-case letter, then letters, digits or '_' (63 at most)."
  }
}

variable "master_username" {
  description = "Master user name; its password lives in the RDS-managed secret."
  type        = string
  default     = "beam_etl"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,15}$", var.master_username)) && !contains(["admin", "postgres", "rdsadmin"], var.master_username)
    error_message = "master_username: a lower-case letter, then letters, digits or '_' (16 at most), not a reserved name."
  }
}

variable "allocated_storage_gb" {
  description = "Initial storage in GiB."
  type        = number
  default     = 50

  validation {
    condition     = var.allocated_storage_gb >= 20
    error_message = "allocated_storage_gb must be at least 20 (the gp3 minimum)."
  }
}

variable "max_allocated_storage_gb" {
  description = "Upper bound of storage autoscaling in GiB."
  type        = number
  default     = 500
}

variable "multi_az" {
  description = "Standby replica in a second zone with automatic failover."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery window)."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 7 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 7 and 35."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the instance until this is turned off."
  type        = bool
  default     = true
}

variable "log_min_duration_statement_ms" {
  description = "Log statements that run longer than this many milliseconds (-1: off)."
  type        = number
  default     = 1000
}

variable "logs_kms_key_arn" {
  description = "KMS key of the exported PostgreSQL log groups."
  type        = string
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the exported database logs."
  type        = number
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "name" {
  description = "Name prefix of every resource (for example beam-etl-prod)."
  type        = string
}

variable "vpc_cidr" {
  description = "IPv4 range of the VPC, /16 to /20; each subnet takes 4 more prefix bits (a /20 of a /16)."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && can(regex("^[0-9.]+/(1[6-9]|20)$", var.vpc_cidr))
    error_message = "vpc_cidr must be an IPv4 CIDR block from /16 to /20, for example 10.40.0.0/16."
  }
}

variable "availability_zones" {
  description = "Availability zones (names such as eu-west-1a) to spread subnets over: 2 or 3."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 3 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must name 2 or 3 distinct zones."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper, but one zone's outage cuts the others' egress) instead of one per zone."
  type        = bool
  default     = false
}

variable "logs_kms_key_arn" {
  description = "KMS key that encrypts the flow-log group."
  type        = string
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the flow logs."
  type        = number
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

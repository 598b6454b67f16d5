# beam_etl control plane on AWS: the REST API (python -m beam_etl.api) and the Beam SDK worker
# pool on ECS Fargate, the state store on RDS PostgreSQL, run output and dead-letter records in
# S3, secrets in Secrets Manager. See README.md beside this file and docs/deploy.md.

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = merge(
      {
        Project     = "beam_etl"
        Environment = var.environment
        ManagedBy   = "terraform"
      },
      var.tags,
    )
  }
}

locals {
  name = "${var.name}-${var.environment}"

  state_url = format(
    "postgresql://%s@%s:%d/%s?sslmode=require",
    module.database.master_username,
    module.database.address,
    module.database.port,
    module.database.database_name,
  )
}

# One key for every CloudWatch log group of the deployment (flow logs, database, services, WAF).
module "logs_kms" {
  source = "./modules/kms"

  name                  = "${local.name}-logs"
  description           = "${local.name}: CloudWatch log groups"
  allow_cloudwatch_logs = true
}

module "network" {
  source = "./modules/network"

  name               = local.name
  vpc_cidr           = var.vpc_cidr
  availability_zones = var.availability_zones
  single_nat_gateway = var.single_nat_gateway
  logs_kms_key_arn   = module.logs_kms.key_arn
  log_retention_days = var.log_retention_days
}

module "storage" {
  source = "./modules/storage"

  name                   = local.name
  output_expiration_days = var.output_expiration_days
  dlq_expiration_days    = var.dlq_expiration_days
  log_retention_days     = var.log_retention_days
}

module "secrets" {
  source = "./modules/secrets"

  name                 = local.name
  rotation_lambda_arns = var.secret_rotation_lambda_arns
}

module "registry" {
  source = "./modules/registry"

  name            = local.name
  repository_name = var.ecr_repository_name
}

module "database" {
  source = "./modules/database"

  name                      = local.name
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = { api = module.ecs.api_security_group_id }
  engine_version            = var.db_engine_version
  instance_class            = var.db_instance_class
  multi_az                  = var.db_multi_az
  allocated_storage_gb      = var.db_allocated_storage_gb
  max_allocated_storage_gb  = var.db_max_allocated_storage_gb
  backup_retention_days     = var.db_backup_retention_days
  deletion_protection       = var.db_deletion_protection
  logs_kms_key_arn          = module.logs_kms.key_arn
  log_retention_days        = var.log_retention_days
}

module "iam" {
  source = "./modules/iam"

  name               = local.name
  ecr_repository_arn = module.registry.repository_arn
  log_group_arns     = module.ecs.log_group_arns
  injected_secret_arns = [
    module.database.master_user_secret_arn,
    module.secrets.master_key_secret_arn,
    module.secrets.secret_encryption_key_secret_arn,
  ]
  secret_kms_key_arns = [
    module.database.kms_key_arn,
    module.secrets.kms_key_arn,
  ]
  output_bucket_arn        = module.storage.output_bucket_arn
  output_prefixes          = [module.storage.output_prefix, module.storage.dlq_prefix]
  artifacts_bucket_arn     = module.storage.artifacts_bucket_arn
  storage_kms_key_arn      = module.storage.kms_key_arn
  github_repository        = var.github_repository
  github_oidc_provider_arn = var.github_oidc_provider_arn
  terraform_state_bucket   = var.terraform_state_bucket
  terraform_state_key      = var.terraform_state_key
}

module "ecs" {
  source = "./modules/ecs"

  name                    = local.name
  vpc_id                  = module.network.vpc_id
  public_subnet_ids       = module.network.public_subnet_ids
  private_subnet_ids      = module.network.private_subnet_ids
  alb_internal            = var.alb_internal
  alb_ingress_cidrs       = var.alb_ingress_cidrs
  certificate_arn         = var.certificate_arn
  alb_deletion_protection = var.alb_deletion_protection
  alb_log_bucket          = module.storage.logs_bucket_name
  alb_log_prefix          = module.storage.alb_log_prefix
  waf_rate_limit          = var.waf_rate_limit

  image_repository_url = module.registry.repository_url
  image_tag            = var.image_tag
  execution_role_arn   = module.iam.execution_role_arn
  task_role_arn        = module.iam.task_role_arn
  logs_kms_key_arn     = module.logs_kms.key_arn
  log_retention_days   = var.log_retention_days

  state_url                        = local.state_url
  database_security_group_id       = module.database.security_group_id
  database_password_secret_arn     = module.database.master_user_secret_arn
  master_key_secret_arn            = module.secrets.master_key_secret_arn
  secret_encryption_key_secret_arn = module.secrets.secret_encryption_key_secret_arn
  output_uri                       = "s3://${module.storage.output_bucket_name}/${module.storage.output_prefix}"
  dlq_uri                          = "s3://${module.storage.output_bucket_name}/${module.storage.dlq_prefix}"
  extra_environment                = var.extra_environment

  api_cpu                   = var.api_cpu
  api_memory                = var.api_memory
  api_ephemeral_storage_gib = var.api_ephemeral_storage_gib
  api_desired_count         = var.api_desired_count
  worker_cpu                = var.worker_cpu
  worker_memory             = var.worker_memory
  worker_desired_count      = var.worker_desired_count
}

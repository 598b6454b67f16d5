# ECS on Fargate: the control plane (service "api", python -m beam_etl.api behind an HTTPS load
# balancer with WAF) and the Beam SDK worker pool (service "worker", the image's boot entrypoint
# with --worker_pool, found by the API's runs at worker.<namespace>:50000 through Cloud Map).
#
# Both run the one beam_etl image (the repository Dockerfile) as the image's non-root user, with a
# read-only root file system; the paths they write are task-local volumes: /data/output (run
# folders, API only), /tmp, the user's home (caches), and for the worker Beam's per-worker virtualenv.

data "aws_region" "current" {}

locals {
  image       = "${var.image_repository_url}:${var.image_tag}"
  api_port    = 8080
  worker_port = 50000
  namespace   = "${var.name}.internal"
  worker_host = "worker.${local.namespace}"
  region      = data.aws_region.current.name

  common_environment = merge(
    {
      AWS_REGION              = local.region
      AWS_DEFAULT_REGION      = local.region
      BEAM_ETL_OUTPUT_DIR     = "/data/output"
      BEAM_ETL_STATE_URL      = var.state_url
      BEAM_ETL_API_STATE      = var.state_url # read by python -m beam_etl.api tenants|keys
      BEAM_ETL_OUTPUT_URI     = var.output_uri
      BEAM_ETL_DLQ_URI        = var.dlq_uri
      BEAM_ETL_WORKER_POOL    = "${local.worker_host}:${local.worker_port}"
      PGSSLMODE               = "require"
      PIP_NO_CACHE_DIR        = "1"
      PYTHONDONTWRITEBYTECODE = "1"
    },
    var.extra_environment,
  )
  environment = [for k in sort(keys(local.common_environment)) : { name = k, value = local.common_environment[k] }]

  # Injected by the ECS agent (execution role) at task start; never in the task definition.
  api_secrets = [
    { name = "PGPASSWORD", valueFrom = "${var.database_password_secret_arn}:password::" },
    { name = "BEAM_ETL_API_MASTER_KEY", valueFrom = var.master_key_secret_arn },
    { name = "BEAM_ETL_API_SECRET_KEY", valueFrom = var.secret_encryption_key_secret_arn },
  ]

  log_options = {
    api = {
      "awslogs-group"         = "/ecs/${var.name}/api"
      "awslogs-region"        = local.region
      "awslogs-stream-prefix" = "api"
      "mode"                  = "non-blocking"
      "max-buffer-size"       = "4m"
    }
    worker = {
      "awslogs-group"         = "/ecs/${var.name}/worker"
      "awslogs-region"        = local.region
      "awslogs-stream-prefix" = "worker"
      "mode"                  = "non-blocking"
      "max-buffer-size"       = "4m"
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Cluster, logs, service discovery
# ---------------------------------------------------------------------------------------------

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_cloudwatch_log_group" "service" {
  for_each = local.log_options

  name              = each.value["awslogs-group"]
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
  tags              = var.tags
}

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = local.namespace
  description = "Private names of the ${var.name} services"
  vpc         = var.vpc_id
  tags        = var.tags
}

resource "aws_service_discovery_service" "worker" {
  name = "worker"

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.this.id
    routing_policy = "MULTIVALUE"

    dns_records {
      ttl  = 10
      type = "A"
    }
  }

  health_check_custom_config {
    failure_threshold = 1
  }

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Security groups: internet/corporate CIDRs -> ALB (80, 443) -> api (8080);
# api <-> worker (50000 one way, the runner's callback ports the other); api -> PostgreSQL;
# both -> 443 anywhere (AWS APIs through the NAT gateways and the S3 endpoint).
# ---------------------------------------------------------------------------------------------

resource "aws_security_group" "alb" {
  name_prefix = "${var.name}-alb-"
  description = "Load balancer of the beam_etl API"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-alb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "api" {
  name_prefix = "${var.name}-api-"
  description = "beam_etl API tasks"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-api" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "worker" {
  name_prefix = "${var.name}-worker-"
  description = "beam_etl Beam SDK worker pool tasks"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-worker" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.alb_ingress_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "alb_http_redirect" {
  for_each = toset(var.alb_ingress_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTP from ${each.value}, answered only with a redirect to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the API tasks"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = local.api_port
  to_port                      = local.api_port
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.api.id
  description                  = "From the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = local.api_port
  to_port                      = local.api_port
}

resource "aws_vpc_security_group_ingress_rule" "api_from_worker" {
  security_group_id            = aws_security_group.api.id
  description                  = "SDK harness callbacks to the runner's control, data and logging services"
  referenced_security_group_id = aws_security_group.worker.id
  ip_protocol                  = "tcp"
  from_port                    = var.runner_callback_ports.from
  to_port                      = var.runner_callback_ports.to
}

resource "aws_vpc_security_group_egress_rule" "api_to_worker" {
  security_group_id            = aws_security_group.api.id
  description                  = "To the worker pool"
  referenced_security_group_id = aws_security_group.worker.id
  ip_protocol                  = "tcp"
  from_port                    = local.worker_port
  to_port                      = local.worker_port
}

resource "aws_vpc_security_group_egress_rule" "api_to_database" {
  security_group_id            = aws_security_group.api.id
  description                  = "To the PostgreSQL state store"
  referenced_security_group_id = var.database_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_api" {
  security_group_id            = aws_security_group.worker.id
  description                  = "Worker pool requests from the API's runs"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = local.worker_port
  to_port                      = local.worker_port
}

resource "aws_vpc_security_group_egress_rule" "worker_to_api" {
  security_group_id            = aws_security_group.worker.id
  description                  = "SDK harness callbacks to the runner in the API task"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = var.runner_callback_ports.from
  to_port                      = var.runner_callback_ports.to
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = {
    api    = aws_security_group.api.id
    worker = aws_security_group.worker.id
  }

  security_group_id = each.value
  description       = "HTTPS to AWS APIs (ECR, S3, Secrets Manager, CloudWatch) and package sources"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# ---------------------------------------------------------------------------------------------
# Load balancer
# ---------------------------------------------------------------------------------------------

resource "aws_lb" "api" {
  name                       = substr("${var.name}-api", 0, 32)
  load_balancer_type         = "application"
  internal                   = var.alb_internal
  subnets                    = var.alb_internal ? var.private_subnet_ids : var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "strictest"
  enable_deletion_protection = var.alb_deletion_protection
  idle_timeout               = 120

  access_logs {
    bucket  = var.alb_log_bucket
    prefix  = var.alb_log_prefix
    enabled = true
  }

  tags = var.tags
}

resource "aws_lb_target_group" "api" {
  name                 = substr("${var.name}-api", 0, 32)
  port                 = local.api_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    path                = var.health_check_path
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.api.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.tls_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }

  tags = var.tags
}

resource "aws_lb_listener" "http_redirect" {
  load_balancer_arn = aws_lb.api.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# WAF in front of the load balancer: AWS managed rules (common, known bad inputs incl. Log4j,
# IP reputation) and a per-IP rate limit; every request logged to CloudWatch.
# ---------------------------------------------------------------------------------------------

resource "aws_wafv2_web_acl" "api" {
  name        = "${var.name}-api"
  description = "beam_etl API"
  scope       = "REGIONAL"

  default_action {
    allow {}
  }

  rule {
    name     = "AWSManagedRulesAmazonIpReputationList"
    priority = 1

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesAmazonIpReputationList"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "AWSManagedRulesAmazonIpReputationList"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "AWSManagedRulesCommonRuleSet"
    priority = 2

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesCommonRuleSet"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "AWSManagedRulesCommonRuleSet"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "AWSManagedRulesKnownBadInputsRuleSet"
    priority = 3

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "AWSManagedRulesKnownBadInputsRuleSet"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "rate-limit-per-ip"
    priority = 10

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit              = var.waf_rate_limit
        aggregate_key_type = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "rate-limit-per-ip"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.name}-api"
    sampled_requests_enabled   = true
  }

  tags = var.tags
}

resource "aws_wafv2_web_acl_association" "api" {
  resource_arn = aws_lb.api.arn
  web_acl_arn  = aws_wafv2_web_acl.api.arn
}

resource "aws_cloudwatch_log_group" "waf" {
  # WAF requires the aws-waf-logs- name prefix.
  name              = "aws-waf-logs-${var.name}-api"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
  tags              = var.tags
}

resource "aws_wafv2_web_acl_logging_configuration" "api" {
  resource_arn            = aws_wafv2_web_acl.api.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  redacted_fields {
    single_header {
      name = "authorization"
    }
  }

  redacted_fields {
    single_header {
      name = "x-api-key"
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Task definitions
# ---------------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "api" {
  family                   = "${var.name}-api"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.api_cpu
  memory                   = var.api_memory
  execution_role_arn       = var.execution_role_arn
  task_role_arn            = var.task_role_arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  ephemeral_storage {
    size_in_gib = var.api_ephemeral_storage_gib
  }

  volume {
    name = "output"
  }

  volume {
    name = "tmp"
  }

  volume {
    name = "home"
  }

  container_definitions = jsonencode([
    {
      name      = "api"
      image     = local.image
      essential = true
      user      = "10001:10001"
      # The image's ENTRYPOINT is Beam's boot (worker pool); the API replaces it.
      entryPoint = ["python", "-m", "beam_etl.api"]
      command = [
        "--host", "0.0.0.0",
        "--port", tostring(local.api_port),
        "--output-dir", "/data/output",
        "--state", var.state_url,
      ]
      readonlyRootFilesystem = true
      privileged             = false
      portMappings           = [{ containerPort = local.api_port, protocol = "tcp" }]
      environment            = local.environment
      secrets                = local.api_secrets
      mountPoints = [
        { sourceVolume = "output", containerPath = "/data/output", readOnly = false },
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
        { sourceVolume = "home", containerPath = "/home/beam", readOnly = false },
      ]
      # An init process reaps the pipeline subprocesses the API starts and forwards SIGTERM.
      linuxParameters = { initProcessEnabled = true }
      stopTimeout     = 120
      healthCheck = {
        command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${local.api_port}${var.health_check_path}', timeout=3)"]
        interval    = 30
        timeout     = 5
        retries     = 3
        startPeriod = 60
      }
      logConfiguration = { logDriver = "awslogs", options = local.log_options.api }
    },
  ])

  tags = var.tags
}

resource "aws_ecs_task_definition" "worker" {
  family                   = "${var.name}-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.worker_cpu
  memory                   = var.worker_memory
  execution_role_arn       = var.execution_role_arn
  task_role_arn            = var.task_role_arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "tmp"
  }

  volume {
    name = "beam-venv"
  }

  volume {
    name = "home"
  }

  container_definitions = jsonencode([
    {
      name      = "worker"
      image     = local.image
      essential = true
      user      = "10001:10001"
      # Beam's boot entrypoint (the image's ENTRYPOINT) serves the SDK worker pool.
      command                = ["--worker_pool"]
      readonlyRootFilesystem = true
      privileged             = false
      portMappings           = [{ containerPort = local.worker_port, protocol = "tcp" }]
      environment            = local.environment
      mountPoints = [
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
        { sourceVolume = "beam-venv", containerPath = "/opt/apache/beam-venv", readOnly = false },
        { sourceVolume = "home", containerPath = "/home/beam", readOnly = false },
      ]
      linuxParameters = { initProcessEnabled = true }
      healthCheck = {
        command     = ["CMD", "python", "-c", "import socket; socket.create_connection(('127.0.0.1', ${local.worker_port}), 3).close()"]
        interval    = 30
        timeout     = 5
        retries     = 3
        startPeriod = 30
      }
      logConfiguration = { logDriver = "awslogs", options = local.log_options.worker }
    },
  ])

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------

resource "aws_ecs_service" "api" {
  name                   = "api"
  cluster                = aws_ecs_cluster.this.id
  task_definition        = aws_ecs_task_definition.api.arn
  desired_count          = var.api_desired_count
  launch_type            = "FARGATE"
  platform_version       = "LATEST"
  enable_execute_command = false
  propagate_tags         = "SERVICE"
  # One supervisor owns the runs it started: stop the old task before the new one starts.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  health_check_grace_period_seconds  = 120

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.api.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.api.arn
    container_name   = "api"
    container_port   = local.api_port
  }

  tags       = var.tags
  depends_on = [aws_lb_listener.https]
}

resource "aws_ecs_service" "worker" {
  name                               = "worker"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.worker.arn
  desired_count                      = var.worker_desired_count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  enable_execute_command             = false
  propagate_tags                     = "SERVICE"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.worker.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.worker.arn
  }

  tags = var.tags
}

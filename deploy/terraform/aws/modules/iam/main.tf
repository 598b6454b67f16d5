# Least-privilege roles.
#
#   execution role  used by the ECS agent only: pull the image from the one ECR repository, write
#                   to the service log groups, read the exact secrets injected into the containers
#                   (and decrypt them through Secrets Manager only)
#   task role       assumed by the containers: read and write run output and dead-letter records
#                   under their prefixes of the output bucket, read the artefacts bucket; nothing
#                   else (the secrets reach the containers through the execution role)
#   ci roles        optional (github_repository set): GitHub Actions OIDC roles, one that pushes
#                   images to the repository from the main branch, one that plans on pull requests
#
# Wildcards, each one required by AWS:
#   * ecr:GetAuthorizationToken has no resource-level permissions; its Resource must be "*".
#   * Log-stream ARNs end in ":log-stream:*" because ECS names a stream per task at run time.
#   * Object ARNs end in "/PREFIX*" (S3 object keys under a prefix).
#   * The plan role uses the AWS-managed ReadOnlyAccess policy: a plan refreshes every resource
#     type in this configuration, and listing each read action by hand drifts from the provider.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition
  create_ci  = var.github_repository != ""
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Task execution role
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role" "execution" {
  name_prefix        = "${substr(var.name, 0, 24)}-exec-"
  description        = "ECS agent of ${var.name}: pull the image, write logs, read the injected secrets"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # no resource-level permissions exist for this action
  }

  statement {
    sid = "PullTheImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:GetDownloadUrlForLayer",
      "ecr:BatchGetImage",
    ]
    resources = [var.ecr_repository_arn]
  }

  statement {
    sid     = "WriteServiceLogs"
    actions = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = flatten([
      for arn in var.log_group_arns : [arn, "${arn}:log-stream:*"]
    ])
  }

  statement {
    sid       = "ReadInjectedSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = var.injected_secret_arns
  }

  statement {
    sid       = "DecryptInjectedSecrets"
    actions   = ["kms:Decrypt"]
    resources = var.secret_kms_key_arns
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-log-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# ---------------------------------------------------------------------------------------------
# Task role
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name_prefix        = "${substr(var.name, 0, 24)}-task-"
  description        = "beam_etl containers of ${var.name}: run output and dead-letter records in S3"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ListOutputPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [var.output_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = flatten([for p in var.output_prefixes : [p, "${p}*"]])
    }
  }

  statement {
    sid = "ReadWriteOutputObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [for p in var.output_prefixes : "${var.output_bucket_arn}/${p}*"]
  }

  statement {
    sid       = "ListArtifacts"
    actions   = ["s3:ListBucket"]
    resources = [var.artifacts_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.artifacts_read_prefix, "${var.artifacts_read_prefix}*"]
    }
  }

  statement {
    sid       = "ReadArtifacts"
    actions   = ["s3:GetObject"]
    resources = ["${var.artifacts_bucket_arn}/${var.artifacts_read_prefix}*"]
  }

  statement {
    sid       = "UseTheStorageKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.storage_kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "s3-output-and-artifacts"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# ---------------------------------------------------------------------------------------------
# GitHub Actions OIDC roles (optional)
# ---------------------------------------------------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  count = local.create_ci && var.github_oidc_provider_arn == "" ? 1 : 0

  url             = "https://token.actions.githubusercontent.com"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]
  tags            = var.tags
}

locals {
  github_provider_arn = var.github_oidc_provider_arn != "" ? var.github_oidc_provider_arn : try(aws_iam_openid_connect_provider.github[0].arn, "")
  github_subjects = {
    push = ["repo:${var.github_repository}:ref:refs/heads/main"]
    plan = ["repo:${var.github_repository}:pull_request"]
  }
}

data "aws_iam_policy_document" "github_assume" {
  for_each = local.create_ci ? local.github_subjects : {}

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [local.github_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = each.value
    }
  }
}

resource "aws_iam_role" "ci" {
  for_each = data.aws_iam_policy_document.github_assume

  name_prefix          = "${substr(var.name, 0, 24)}-ci-${each.key}-"
  description          = "GitHub Actions (${var.github_repository}) ${each.key} role of ${var.name}"
  assume_role_policy   = each.value.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "ci_push" {
  count = local.create_ci ? 1 : 0

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # no resource-level permissions exist for this action
  }

  statement {
    sid = "PushToTheRepository"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [var.ecr_repository_arn]
  }
}

resource "aws_iam_role_policy" "ci_push" {
  count = local.create_ci ? 1 : 0

  name   = "push-image"
  role   = aws_iam_role.ci["push"].id
  policy = data.aws_iam_policy_document.ci_push[0].json
}

resource "aws_iam_role_policy_attachment" "ci_plan_read_only" {
  count = local.create_ci ? 1 : 0

  role       = aws_iam_role.ci["plan"].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/ReadOnlyAccess"
}

data "aws_iam_policy_document" "ci_plan_state" {
  count = local.create_ci && var.terraform_state_bucket != "" ? 1 : 0

  statement {
    sid       = "ListState"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${var.terraform_state_bucket}"]
    condition {
      test     = "StringEquals"
      variable = "s3:prefix"
      values   = [var.terraform_state_key]
    }
  }

  statement {
    sid       = "ReadState"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${var.terraform_state_bucket}/${var.terraform_state_key}"]
  }

  # terraform plan takes the state lock (S3 lock file, use_lockfile = true) and releases it.
  statement {
    sid       = "LockState"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["arn:${local.partition}:s3:::${var.terraform_state_bucket}/${var.terraform_state_key}.tflock"]
  }
}

resource "aws_iam_role_policy" "ci_plan_state" {
  count = local.create_ci && var.terraform_state_bucket != "" ? 1 : 0

  name   = "terraform-state"
  role   = aws_iam_role.ci["plan"].id
  policy = data.aws_iam_policy_document.ci_plan_state[0].json
}

# Three buckets:
#   output    run output and dead-letter records (prefixes var.output_prefix and var.dlq_prefix),
#             SSE-KMS with this module's CMK, versioned, access-logged, lifecycle-managed
#   artifacts pipeline templates, wheels and other deploy artefacts, same protections
#   logs      S3 server access logs of the two above and the load balancer's access logs; SSE-S3
#             (AES256) because neither S3 server access logging nor ALB access logging can write to
#             a bucket whose default encryption is SSE-KMS
# Every bucket: all public access blocked, ACLs disabled (bucket owner enforced), TLS-only policy,
# EventBridge notifications on, lifecycle rules that expire old versions and abort stale uploads.

data "aws_caller_identity" "current" {}
data "aws_elb_service_account" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  data_buckets = {
    output    = "${var.name}-output-${local.account_id}"
    artifacts = "${var.name}-artifacts-${local.account_id}"
  }
  logs_bucket = "${var.name}-logs-${local.account_id}"
}

module "kms" {
  source = "../kms"

  name        = "${var.name}-storage"
  description = "${var.name}: S3 run output, dead-letter records and artefacts"
  tags        = var.tags
}

# ---------------------------------------------------------------------------------------------
# Data buckets
# ---------------------------------------------------------------------------------------------

module "output" {
  source = "../s3-bucket"

  bucket                            = local.data_buckets.output
  kms_key_arn                       = module.kms.key_arn
  access_log_bucket                 = aws_s3_bucket.logs.id
  access_log_prefix                 = "s3/output/"
  noncurrent_version_retention_days = var.noncurrent_version_retention_days
  # Run output ages out; dead-letter records are kept longer (they are replayed from here).
  prefix_expiration_days = {
    (var.output_prefix) = var.output_expiration_days
    (var.dlq_prefix)    = var.dlq_expiration_days
  }
  tags = merge(var.tags, { Purpose = "output" })
}

module "artifacts" {
  source = "../s3-bucket"

  bucket                            = local.data_buckets.artifacts
  kms_key_arn                       = module.kms.key_arn
  access_log_bucket                 = aws_s3_bucket.logs.id
  access_log_prefix                 = "s3/artifacts/"
  noncurrent_version_retention_days = var.noncurrent_version_retention_days
  tags                              = merge(var.tags, { Purpose = "artifacts" })
}

# ---------------------------------------------------------------------------------------------
# Logs bucket
# ---------------------------------------------------------------------------------------------

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_145:S3 server access logging and ALB access logging deliver only to buckets encrypted with SSE-S3 (AES256); SSE-KMS here would drop every log
  #checkov:skip=CKV_AWS_144:single-region deployment; the logs are an audit trail kept for var.log_retention_days, cross-region replication is left to an organisation-wide log archive
  bucket        = local.logs_bucket
  force_destroy = false
  tags          = merge(var.tags, { Purpose = "logs" })
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_notification" "logs" {
  bucket      = aws_s3_bucket.logs.id
  eventbridge = true
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "expire-logs"
    status = "Enabled"
    filter {}
    transition {
      days          = 90
      storage_class = "STANDARD_IA"
    }
    expiration {
      days = var.log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.logs]
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.logs.arn,
      "${aws_s3_bucket.logs.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # S3 server access logs of this account's data buckets.
  statement {
    sid       = "S3ServerAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [module.output.arn, module.artifacts.arn]
    }
  }

  # ALB access logs: the regional Elastic Load Balancing account writes under alb/AWSLogs/<account>/.
  statement {
    sid       = "AlbAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/${var.alb_log_prefix}/AWSLogs/${local.account_id}/*"]
    principals {
      type        = "AWS"
      identifiers = [data.aws_elb_service_account.current.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket     = aws_s3_bucket.logs.id
  policy     = data.aws_iam_policy_document.logs.json
  depends_on = [aws_s3_bucket_public_access_block.logs]
}

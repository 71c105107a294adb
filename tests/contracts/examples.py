"""A valid and an invalid request for every RPC, as proto3 JSON.

`test_validation.py` checks that the validator accepts the first and rejects the second,
and that every RPC of every service has an entry here.
"""

from __future__ import annotations

JOB = "trainingJobs/job-1"
SPEC = {
    "task": {"kind": "TASK_KIND_MODULAR_ARITHMETIC"},
    "model": {"layers": 2, "width": 128, "heads": 4, "contextLength": 4},
    "optimizer": {"kind": "OPTIMIZER_KIND_ADAM", "learningRate": 1e-3, "beta1": 0.9, "beta2": 0.98},
    "grokfast": {"kind": "GROKFAST_KIND_EMA", "alpha": 0.98, "lamb": 2.0},
    "batchSize": 512,
    "maxSteps": 1000,
}

MON = "agentforge.monitoring.v1.MonitoringService."
FORGE = "agentforge.forge.v1.ForgeService."
RULE = {
    "displayName": "valkey down",
    "severity": "ALERT_SEVERITY_CRITICAL",
    "enabled": True,
    "componentStatus": {"component": "components/valkey", "status": "HEALTH_STATUS_NOT_SERVING", "forDuration": "30s"},
}

MODEL = "agentforge.model.v1.ModelService."
RT = "agentforge.realtime.v1.RealtimeService."
VERSION = "models/cognate/versions/3"

# method full name -> (valid request, invalid request, field path the invalid one violates)
EXAMPLES: dict[str, tuple[dict, dict, str]] = {
    # --- training -------------------------------------------------------------------
    "agentforge.training.v1.TrainingService.CreateTrainingJob": (
        {"trainingJob": {"spec": SPEC}, "requestId": "5f0c6d1e-1b2a-4c3d-8e9f-0a1b2c3d4e5f"},
        {"trainingJob": {"spec": {**SPEC, "model": {**SPEC["model"], "heads": 0}}}},
        "training_job.spec.model.heads",
    ),
    "agentforge.training.v1.TrainingService.GetTrainingJob": (
        {"name": JOB},
        {"name": "jobs/1"},
        "name",
    ),
    "agentforge.training.v1.TrainingService.ListTrainingJobs": (
        {"pageSize": 10, "states": ["TRAINING_JOB_STATE_RUNNING"], "labelSelector": "team=a,exp=b"},
        {"pageSize": 5000},
        "page_size",
    ),
    "agentforge.training.v1.TrainingService.CancelTrainingJob": ({"name": JOB}, {"name": ""}, "name"),
    "agentforge.training.v1.TrainingService.PauseTrainingJob": ({"name": JOB}, {"name": "trainingJobs/"}, "name"),
    "agentforge.training.v1.TrainingService.ResumeTrainingJob": ({"name": JOB}, {"name": "trainingJobs/A"}, "name"),
    "agentforge.training.v1.TrainingService.DeleteTrainingJob": ({"name": JOB}, {"name": "x"}, "name"),
    "agentforge.training.v1.TrainingService.AdjustTrainingJob": (
        {"name": JOB, "learningRate": 5e-4, "grokfastLamb": 3.0},
        {"name": JOB, "learningRate": -1},
        "learning_rate",
    ),
    "agentforge.training.v1.TrainingService.CheckpointTrainingJob": ({"name": JOB}, {}, "name"),
    "agentforge.training.v1.TrainingService.WatchTrainingJob": (
        {"name": JOB, "cursor": "1-0"},
        {"name": JOB, "cursor": "c" * 300},
        "cursor",
    ),
    "agentforge.training.v1.TrainingService.GetTrainingJobMetrics": (
        {"name": JOB + "/metrics", "maxPoints": 500},
        {"name": JOB, "maxPoints": 20000},
        "name",
    ),
    "agentforge.training.v1.TrainingService.ListCheckpoints": (
        {"parent": JOB, "pageSize": 3},
        {"parent": "models/m"},
        "parent",
    ),
    # --- model ----------------------------------------------------------------------
    MODEL + "CreateModel": ({"model": {"displayName": "x", "tags": ["a"]}, "modelId": "cognate"}, {"modelId": "Bad_Id"}, "model_id"),
    MODEL + "GetModel": ({"name": "models/cognate"}, {"name": "models/"}, "name"),
    MODEL + "ListModels": ({"pageSize": 10, "tags": ["grokfast"], "labelSelector": "a=b"}, {"pageSize": 5000}, "page_size"),
    MODEL + "UpdateModel": (
        {"model": {"name": "models/x", "description": "d"}, "updateMask": "description"},
        {"model": {"name": "models/x"}, "updateMask": "aliases"},
        "update_mask",
    ),
    MODEL + "DeleteModel": ({"name": "models/x", "force": True}, {"name": "x"}, "name"),
    MODEL + "CreateModelVersion": (
        {"parent": "models/x", "modelVersion": {"metrics": {"val_accuracy": 0.9}, "lineage": {
            "trainingJob": "trainingJobs/a", "checkpoint": "trainingJobs/a/checkpoints/c1",
            "parentVersions": ["models/x/versions/1"]}}},
        {"parent": "models/x", "modelVersion": {"lineage": {"parentVersions": ["models/x/versions/production"]}}},
        "model_version.lineage.parent_versions",
    ),
    MODEL + "GetModelVersion": ({"name": "models/x/versions/production"}, {"name": "models/x/versions/0"}, "name"),
    MODEL + "ListModelVersions": (
        {"parent": "models/x", "orderBy": "metrics.val_accuracy desc", "alias": "production"},
        {"parent": "models/x", "orderBy": "name"},
        "order_by",
    ),
    MODEL + "UpdateModelVersion": (
        {"modelVersion": {"name": VERSION, "tags": ["t"]}, "updateMask": "tags"},
        {"modelVersion": {"name": "models/x/versions/latest"}, "updateMask": "tags"},
        "model_version",
    ),
    MODEL + "DeleteModelVersion": ({"name": VERSION}, {"name": "models/x/versions/prod"}, "name"),
    MODEL + "SetModelAlias": ({"name": "models/x", "alias": "production", "version": "3"}, {"name": "models/x", "alias": "latest", "version": "3"}, "alias"),
    MODEL + "DeleteModelAlias": ({"name": "models/x", "alias": "production"}, {"name": "models/x", "alias": "9"}, "alias"),
    MODEL + "UploadModelArtifact": (
        {"header": {"name": VERSION, "sizeBytes": 10, "sha256": "a" * 64, "format": "ARTIFACT_FORMAT_STATE_DICT"}},
        {"header": {"name": VERSION, "sizeBytes": 10, "sha256": "A" * 64, "format": "ARTIFACT_FORMAT_STATE_DICT"}},
        "header.sha256",
    ),
    MODEL + "DownloadModelArtifact": ({"name": "models/x/versions/latest", "chunkSize": 65536}, {"name": VERSION, "chunkSize": 100}, "chunk_size"),
    MODEL + "ExportModelVersion": ({"name": VERSION, "format": "ARTIFACT_FORMAT_ONNX"}, {"name": VERSION}, "format"),
    MODEL + "GetModelExport": ({"name": VERSION + "/exports/onnx"}, {"name": VERSION + "/exports/ONNX"}, "name"),
    MODEL + "ListModelExports": ({"parent": VERSION}, {"parent": VERSION, "pageToken": "x" * 600}, "page_token"),
    # --- realtime -------------------------------------------------------------------
    RT + "Subscribe": (
        {"topics": ["trainingJobs/abc", "alerts"], "topicPatterns": ["trainingJobs/*", "models/**"], "heartbeatInterval": "10s"},
        {"topics": ["a"], "heartbeatInterval": "0s"},
        "heartbeat_interval",
    ),
    RT + "Publish": ({"topic": "trainingJobs/abc", "data": {"k": 1}}, {"topic": "trainingJobs/*", "data": {}}, "topic"),
    RT + "ListTopics": ({"topicPattern": "trainingJobs/*"}, {"pageSize": -1}, "page_size"),
    RT + "GetTopic": ({"name": "topics/trainingJobs/abc"}, {"name": "trainingJobs/abc"}, "name"),
    # --- monitoring and forge -------------------------------------------------------

    MON + "GetSystemHealth": ({"kinds": ["COMPONENT_KIND_SERVICE"]}, {"kinds": ["COMPONENT_KIND_UNSPECIFIED"]}, "kinds"),
    MON + "WatchSystemHealth": ({"interval": "5s"}, {"interval": "0.001s"}, "interval"),
    MON + "GetComponentHealth": ({"name": "components/valkey"}, {"name": "valkey"}, "name"),
    MON + "ListAlerts": ({"pageSize": 10, "states": ["ALERT_STATE_FIRING"], "severities": ["ALERT_SEVERITY_CRITICAL"]}, {"pageSize": 1001}, "page_size"),
    MON + "GetAlert": ({"name": "alerts/a-1"}, {"name": "alerts/"}, "name"),
    MON + "WatchAlerts": ({"cursor": "1712-0"}, {"cursor": "c" * 300}, "cursor"),
    MON + "AcknowledgeAlert": ({"name": "alerts/a-1", "acknowledgedBy": "ops", "comment": "on it"}, {"name": "alerts/a-1"}, "acknowledged_by"),
    MON + "CreateAlertRule": ({"alertRule": RULE, "alertRuleId": "valkey-down"}, {"alertRule": {"displayName": "no condition"}}, "alert_rule"),
    MON + "GetAlertRule": ({"name": "alertRules/valkey-down"}, {"name": "alertRules/Valkey"}, "name"),
    MON + "ListAlertRules": ({"pageSize": 0}, {"pageToken": "t" * 513}, "page_token"),
    MON + "UpdateAlertRule": (
        {"alertRule": {"name": "alertRules/valkey-down", "enabled": False}, "updateMask": "enabled"},
        {"alertRule": {"name": "alertRules/valkey-down"}, "updateMask": "createTime"},
        "update_mask",
    ),
    MON + "DeleteAlertRule": ({"name": "alertRules/valkey-down"}, {}, "name"),
    MON + "ListMethodMetrics": ({"parent": "services/-"}, {"parent": "services/*"}, "parent"),
    MON + "RevokeToken": ({"jti": "0f1e2d3c4b5a", "expireTime": "2026-12-01T00:00:00Z", "reason": "lost laptop"},
                          {"jti": "not a jti!"}, "jti"),
    FORGE + "ListPhases": ({"pageSize": 0}, {"pageSize": -1}, "page_size"),
    FORGE + "GetPhase": ({"name": "phases/final-compression"}, {"name": "phases/Cognate"}, "name"),
    FORGE + "StartPhaseRun": (
        {"phase": "phases/cognate", "phaseName": "cognate", "parameters": {"max_steps": 100}, "requestId": "req-1"},
        {"phase": "phases/cognate", "parameters": {"Max Steps": 100}},
        "parameters",
    ),
    FORGE + "GetPhaseRun": ({"name": "phaseRuns/run-1"}, {"name": "phaseRuns/run-1/x"}, "name"),
    FORGE + "ListPhaseRuns": ({"phase": "phases/cognate", "states": ["PHASE_RUN_STATE_RUNNING"]}, {"phase": "cognate"}, "phase"),
    FORGE + "CancelPhaseRun": ({"name": "phaseRuns/run-1", "reason": "wrong params"}, {"name": ""}, "name"),
    FORGE + "WatchPhaseRun": ({"name": "phaseRuns/run-1", "cursor": "3"}, {"name": "phaseRuns/run-1", "cursor": "c" * 257}, "cursor"),
}

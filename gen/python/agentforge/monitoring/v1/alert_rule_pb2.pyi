import datetime

from agentforge.monitoring.v1 import alert_pb2 as _alert_pb2
from agentforge.monitoring.v1 import health_pb2 as _health_pb2
from buf.validate import validate_pb2 as _validate_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelMatchType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_MATCH_TYPE_UNSPECIFIED: _ClassVar[LabelMatchType]
    LABEL_MATCH_TYPE_EQUAL: _ClassVar[LabelMatchType]
    LABEL_MATCH_TYPE_NOT_EQUAL: _ClassVar[LabelMatchType]
    LABEL_MATCH_TYPE_REGEX: _ClassVar[LabelMatchType]
    LABEL_MATCH_TYPE_NOT_REGEX: _ClassVar[LabelMatchType]

class Comparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_UNSPECIFIED: _ClassVar[Comparison]
    COMPARISON_GREATER_THAN: _ClassVar[Comparison]
    COMPARISON_GREATER_THAN_OR_EQUAL: _ClassVar[Comparison]
    COMPARISON_LESS_THAN: _ClassVar[Comparison]
    COMPARISON_LESS_THAN_OR_EQUAL: _ClassVar[Comparison]
    COMPARISON_EQUAL: _ClassVar[Comparison]
    COMPARISON_NOT_EQUAL: _ClassVar[Comparison]
LABEL_MATCH_TYPE_UNSPECIFIED: LabelMatchType
LABEL_MATCH_TYPE_EQUAL: LabelMatchType
LABEL_MATCH_TYPE_NOT_EQUAL: LabelMatchType
LABEL_MATCH_TYPE_REGEX: LabelMatchType
LABEL_MATCH_TYPE_NOT_REGEX: LabelMatchType
COMPARISON_UNSPECIFIED: Comparison
COMPARISON_GREATER_THAN: Comparison
COMPARISON_GREATER_THAN_OR_EQUAL: Comparison
COMPARISON_LESS_THAN: Comparison
COMPARISON_LESS_THAN_OR_EQUAL: Comparison
COMPARISON_EQUAL: Comparison
COMPARISON_NOT_EQUAL: Comparison

class AlertRule(_message.Message):
    __slots__ = ("name", "display_name", "description", "metric", "component_status", "training_job", "severity", "enabled", "labels", "create_time", "update_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    metric: MetricCondition
    component_status: ComponentCondition
    training_job: TrainingJobCondition
    severity: _alert_pb2.AlertSeverity
    enabled: bool
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., metric: _Optional[_Union[MetricCondition, _Mapping]] = ..., component_status: _Optional[_Union[ComponentCondition, _Mapping]] = ..., training_job: _Optional[_Union[TrainingJobCondition, _Mapping]] = ..., severity: _Optional[_Union[_alert_pb2.AlertSeverity, str]] = ..., enabled: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MetricCondition(_message.Message):
    __slots__ = ("metric", "labels", "comparison", "threshold", "for_duration", "rate_window", "matchers", "quantile", "denominator", "group_by")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FOR_DURATION_FIELD_NUMBER: _ClassVar[int]
    RATE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MATCHERS_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    DENOMINATOR_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    comparison: Comparison
    threshold: float
    for_duration: _duration_pb2.Duration
    rate_window: _duration_pb2.Duration
    matchers: _containers.RepeatedCompositeFieldContainer[LabelMatcher]
    quantile: float
    denominator: MetricSelector
    group_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., comparison: _Optional[_Union[Comparison, str]] = ..., threshold: _Optional[float] = ..., for_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rate_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., matchers: _Optional[_Iterable[_Union[LabelMatcher, _Mapping]]] = ..., quantile: _Optional[float] = ..., denominator: _Optional[_Union[MetricSelector, _Mapping]] = ..., group_by: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricSelector(_message.Message):
    __slots__ = ("metric", "labels", "matchers")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MATCHERS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    matchers: _containers.RepeatedCompositeFieldContainer[LabelMatcher]
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., matchers: _Optional[_Iterable[_Union[LabelMatcher, _Mapping]]] = ...) -> None: ...

class LabelMatcher(_message.Message):
    __slots__ = ("name", "type", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: LabelMatchType
    value: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[LabelMatchType, str]] = ..., value: _Optional[str] = ...) -> None: ...

class ComponentCondition(_message.Message):
    __slots__ = ("component", "status", "for_duration")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FOR_DURATION_FIELD_NUMBER: _ClassVar[int]
    component: str
    status: _health_pb2.HealthStatus
    for_duration: _duration_pb2.Duration
    def __init__(self, component: _Optional[str] = ..., status: _Optional[_Union[_health_pb2.HealthStatus, str]] = ..., for_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TrainingJobCondition(_message.Message):
    __slots__ = ("stalled", "diverged", "grokking_onset", "train_val_gap")
    STALLED_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_FIELD_NUMBER: _ClassVar[int]
    GROKKING_ONSET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_VAL_GAP_FIELD_NUMBER: _ClassVar[int]
    stalled: TrainingJobStalled
    diverged: TrainingJobDiverged
    grokking_onset: GrokkingOnset
    train_val_gap: TrainValGap
    def __init__(self, stalled: _Optional[_Union[TrainingJobStalled, _Mapping]] = ..., diverged: _Optional[_Union[TrainingJobDiverged, _Mapping]] = ..., grokking_onset: _Optional[_Union[GrokkingOnset, _Mapping]] = ..., train_val_gap: _Optional[_Union[TrainValGap, _Mapping]] = ...) -> None: ...

class TrainingJobStalled(_message.Message):
    __slots__ = ("no_step_for",)
    NO_STEP_FOR_FIELD_NUMBER: _ClassVar[int]
    no_step_for: _duration_pb2.Duration
    def __init__(self, no_step_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TrainingJobDiverged(_message.Message):
    __slots__ = ("max_loss",)
    MAX_LOSS_FIELD_NUMBER: _ClassVar[int]
    max_loss: float
    def __init__(self, max_loss: _Optional[float] = ...) -> None: ...

class GrokkingOnset(_message.Message):
    __slots__ = ("validation_accuracy", "memorized_accuracy", "plateau_evaluations")
    VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MEMORIZED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PLATEAU_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    validation_accuracy: float
    memorized_accuracy: float
    plateau_evaluations: int
    def __init__(self, validation_accuracy: _Optional[float] = ..., memorized_accuracy: _Optional[float] = ..., plateau_evaluations: _Optional[int] = ...) -> None: ...

class TrainValGap(_message.Message):
    __slots__ = ("gap", "for_duration")
    GAP_FIELD_NUMBER: _ClassVar[int]
    FOR_DURATION_FIELD_NUMBER: _ClassVar[int]
    gap: float
    for_duration: _duration_pb2.Duration
    def __init__(self, gap: _Optional[float] = ..., for_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

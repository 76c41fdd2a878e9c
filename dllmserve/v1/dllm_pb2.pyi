from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_MODE_UNSPECIFIED: _ClassVar[StreamMode]
    STREAM_MODE_EVERY_STEP: _ClassVar[StreamMode]
    STREAM_MODE_EVERY_K_STEPS: _ClassVar[StreamMode]
    STREAM_MODE_BLOCKS: _ClassVar[StreamMode]
    STREAM_MODE_FINAL_ONLY: _ClassVar[StreamMode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
STREAM_MODE_UNSPECIFIED: StreamMode
STREAM_MODE_EVERY_STEP: StreamMode
STREAM_MODE_EVERY_K_STEPS: StreamMode
STREAM_MODE_BLOCKS: StreamMode
STREAM_MODE_FINAL_ONLY: StreamMode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "gen_length", "steps", "block_length", "cfg_scale", "remasking", "threshold", "seed", "stop_at_eos", "logits_eos_inf", "confidence_eos_eot_inf", "top_p", "top_k", "schedule", "alg_temp", "eps", "steps_per_block", "minimal_topk", "eos_early_stop", "editing_threshold", "structured_output")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    GEN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    REMASKING_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_EOS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_EOS_INF_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_EOS_EOT_INF_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    ALG_TEMP_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_BLOCK_FIELD_NUMBER: _ClassVar[int]
    MINIMAL_TOPK_FIELD_NUMBER: _ClassVar[int]
    EOS_EARLY_STOP_FIELD_NUMBER: _ClassVar[int]
    EDITING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    gen_length: int
    steps: int
    block_length: int
    cfg_scale: float
    remasking: str
    threshold: float
    seed: int
    stop_at_eos: bool
    logits_eos_inf: bool
    confidence_eos_eot_inf: bool
    top_p: float
    top_k: int
    schedule: str
    alg_temp: float
    eps: float
    steps_per_block: int
    minimal_topk: int
    eos_early_stop: bool
    editing_threshold: float
    structured_output: StructuredOutput
    def __init__(self, temperature: _Optional[float] = ..., gen_length: _Optional[int] = ..., steps: _Optional[int] = ..., block_length: _Optional[int] = ..., cfg_scale: _Optional[float] = ..., remasking: _Optional[str] = ..., threshold: _Optional[float] = ..., seed: _Optional[int] = ..., stop_at_eos: _Optional[bool] = ..., logits_eos_inf: _Optional[bool] = ..., confidence_eos_eot_inf: _Optional[bool] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., schedule: _Optional[str] = ..., alg_temp: _Optional[float] = ..., eps: _Optional[float] = ..., steps_per_block: _Optional[int] = ..., minimal_topk: _Optional[int] = ..., eos_early_stop: _Optional[bool] = ..., editing_threshold: _Optional[float] = ..., structured_output: _Optional[_Union[StructuredOutput, _Mapping]] = ...) -> None: ...

class StructuredOutput(_message.Message):
    __slots__ = ("json_schema", "regex", "choice", "json_object")
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    json_schema: str
    regex: str
    choice: ChoiceList
    json_object: bool
    def __init__(self, json_schema: _Optional[str] = ..., regex: _Optional[str] = ..., choice: _Optional[_Union[ChoiceList, _Mapping]] = ..., json_object: _Optional[bool] = ...) -> None: ...

class ChoiceList(_message.Message):
    __slots__ = ("choices",)
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, choices: _Optional[_Iterable[str]] = ...) -> None: ...

class SparseConfig(_message.Message):
    __slots__ = ("enabled", "retention_ratio", "delay_step", "default_block_len", "head_select", "pool_kernel", "layer_wise", "layer_ratios")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    RETENTION_RATIO_FIELD_NUMBER: _ClassVar[int]
    DELAY_STEP_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BLOCK_LEN_FIELD_NUMBER: _ClassVar[int]
    HEAD_SELECT_FIELD_NUMBER: _ClassVar[int]
    POOL_KERNEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_WISE_FIELD_NUMBER: _ClassVar[int]
    LAYER_RATIOS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    retention_ratio: float
    delay_step: int
    default_block_len: int
    head_select: bool
    pool_kernel: int
    layer_wise: bool
    layer_ratios: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, enabled: _Optional[bool] = ..., retention_ratio: _Optional[float] = ..., delay_step: _Optional[int] = ..., default_block_len: _Optional[int] = ..., head_select: _Optional[bool] = ..., pool_kernel: _Optional[int] = ..., layer_wise: _Optional[bool] = ..., layer_ratios: _Optional[_Iterable[float]] = ...) -> None: ...

class StreamOptions(_message.Message):
    __slots__ = ("mode", "every_k", "include_canvas", "mask_placeholder", "include_token_texts", "provisional")
    MODE_FIELD_NUMBER: _ClassVar[int]
    EVERY_K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CANVAS_FIELD_NUMBER: _ClassVar[int]
    MASK_PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TOKEN_TEXTS_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_FIELD_NUMBER: _ClassVar[int]
    mode: StreamMode
    every_k: int
    include_canvas: bool
    mask_placeholder: str
    include_token_texts: bool
    provisional: bool
    def __init__(self, mode: _Optional[_Union[StreamMode, str]] = ..., every_k: _Optional[int] = ..., include_canvas: _Optional[bool] = ..., mask_placeholder: _Optional[str] = ..., include_token_texts: _Optional[bool] = ..., provisional: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "messages", "model", "sampling_params", "sparse_config", "stream_options", "priority", "cancel_on_disconnect")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    STREAM_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: TokenIds
    messages: ChatMessages
    model: str
    sampling_params: SamplingParams
    sparse_config: SparseConfig
    stream_options: StreamOptions
    priority: int
    cancel_on_disconnect: bool
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., messages: _Optional[_Union[ChatMessages, _Mapping]] = ..., model: _Optional[str] = ..., sampling_params: _Optional[_Union[SamplingParams, _Mapping]] = ..., sparse_config: _Optional[_Union[SparseConfig, _Mapping]] = ..., stream_options: _Optional[_Union[StreamOptions, _Mapping]] = ..., priority: _Optional[int] = ..., cancel_on_disconnect: _Optional[bool] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("request_id", "after_step", "attempt", "stream_options")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STREAM_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    after_step: int
    attempt: int
    stream_options: StreamOptions
    def __init__(self, request_id: _Optional[str] = ..., after_step: _Optional[int] = ..., attempt: _Optional[int] = ..., stream_options: _Optional[_Union[StreamOptions, _Mapping]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("accepted", "step", "completed")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    step: StepUpdate
    completed: Completed
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., step: _Optional[_Union[StepUpdate, _Mapping]] = ..., completed: _Optional[_Union[Completed, _Mapping]] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("request_id", "queue_position", "duplicate", "status")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    queue_position: int
    duplicate: bool
    status: str
    def __init__(self, request_id: _Optional[str] = ..., queue_position: _Optional[int] = ..., duplicate: _Optional[bool] = ..., status: _Optional[str] = ...) -> None: ...

class StepUpdate(_message.Message):
    __slots__ = ("step", "total_steps", "block_index", "positions", "token_ids", "masked_left", "text_delta", "canvas", "attempt", "token_texts", "provisional", "edits", "block_done")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_INDEX_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MASKED_LEFT_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    CANVAS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TEXTS_FIELD_NUMBER: _ClassVar[int]
    PROVISIONAL_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_DONE_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    block_index: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    masked_left: int
    text_delta: str
    canvas: str
    attempt: int
    token_texts: _containers.RepeatedScalarFieldContainer[str]
    provisional: _containers.RepeatedCompositeFieldContainer[ProvisionalToken]
    edits: _containers.RepeatedCompositeFieldContainer[TokenEdit]
    block_done: bool
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., block_index: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., token_ids: _Optional[_Iterable[int]] = ..., masked_left: _Optional[int] = ..., text_delta: _Optional[str] = ..., canvas: _Optional[str] = ..., attempt: _Optional[int] = ..., token_texts: _Optional[_Iterable[str]] = ..., provisional: _Optional[_Iterable[_Union[ProvisionalToken, _Mapping]]] = ..., edits: _Optional[_Iterable[_Union[TokenEdit, _Mapping]]] = ..., block_done: _Optional[bool] = ...) -> None: ...

class TokenEdit(_message.Message):
    __slots__ = ("position", "old_token_id", "new_token_id", "text")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    OLD_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    position: int
    old_token_id: int
    new_token_id: int
    text: str
    def __init__(self, position: _Optional[int] = ..., old_token_id: _Optional[int] = ..., new_token_id: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class ProvisionalToken(_message.Message):
    __slots__ = ("position", "token_id", "confidence", "text")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    confidence: float
    text: str
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., confidence: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "steps", "forward_passes")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    steps: int
    forward_passes: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., steps: _Optional[int] = ..., forward_passes: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_ms", "first_update_ms", "total_ms")
    QUEUED_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_UPDATE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queued_ms: float
    first_update_ms: float
    total_ms: float
    def __init__(self, queued_ms: _Optional[float] = ..., first_update_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Completed(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finish_reason", "usage", "timings", "attempt", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    attempt: int
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "workers", "max_model_len")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    workers: int
    max_model_len: int
    def __init__(self, name: _Optional[str] = ..., workers: _Optional[int] = ..., max_model_len: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "model", "device", "state", "running", "waiting", "assigned", "slots", "free_pages", "total_pages", "max_num_seqs")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_PAGES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model: str
    device: str
    state: str
    running: int
    waiting: int
    assigned: int
    slots: int
    free_pages: int
    total_pages: int
    max_num_seqs: int
    def __init__(self, worker_id: _Optional[str] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., state: _Optional[str] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., assigned: _Optional[int] = ..., slots: _Optional[int] = ..., free_pages: _Optional[int] = ..., total_pages: _Optional[int] = ..., max_num_seqs: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "scheduler_id", "dispatcher_leader", "models", "workers", "queue_length", "max_queue", "free_slots")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPATCHER_LEADER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    version: str
    scheduler_id: str
    dispatcher_leader: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    queue_length: int
    max_queue: int
    free_slots: int
    def __init__(self, version: _Optional[str] = ..., scheduler_id: _Optional[str] = ..., dispatcher_leader: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., queue_length: _Optional[int] = ..., max_queue: _Optional[int] = ..., free_slots: _Optional[int] = ...) -> None: ...

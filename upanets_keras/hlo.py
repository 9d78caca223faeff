"""The size of the compiled training step: HLO instructions and fusions, a CPU proxy for a GPU's fixed cost.

A GPU runs roughly one kernel per top-level instruction of the optimized
program, and at small batches the launches, not the arithmetic, may well set
the step time (issue 38). Counting them needs no GPU: the CPU compiles the same HLO
before optimisation, and XLA's CPU fusion is a rough stand-in for the GPU's
(it lacks the GPU's horizontal fusion of small independent kernels, such as
the optimizer's per-variable updates).
`benchmark` reports these counts; every change to the model's ops can be
checked against them.

Example:
>>> import jax, jax.numpy as jnp
>>> lowered = jax.jit(lambda a: (jnp.sin(a) * 2 + 1, a.sum())).lower(jnp.ones(4))
>>> counts = summarize(lowered.as_text(dialect="hlo"), lowered.compile().as_text())
>>> counts["hlo_instructions"] > counts["entry_instructions"] > 0
True
"""

import collections
import contextlib
import re
import time

# Top-level instructions that launch no work: arguments, literals, tuples and views.
NO_WORK = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"})
# JAX's compile events (jax.monitoring): the phase each one times.
JAX_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_seconds",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "trace_seconds",
    "/jax/core/compile/backend_compile_duration": "compile_seconds",
}
JAX_CACHE_HIT = "/jax/compilation_cache/cache_hits"
STEP = "train_step"  # the name Keras' trainers give the step function (and so its jit and HLO module)
_COMMENT = re.compile(r"/\*.*?\*/")


def count_instructions(hlo_text):
    """The opcodes of each computation of an HLO module's text, and the name of its entry computation.

    Returns:
        `({computation: Counter(opcode -> instructions)}, entry name)`.

    Example:
    >>> text = '''HloModule m
    ... ENTRY %main (a: f32[2]) -> (f32[2], f32[]) {
    ...   %a = f32[2]{0} parameter(0)
    ...   %b = f32[2]{0} negate(%a)
    ...   %c = f32[] constant(1)
    ...   ROOT %t = (f32[2]{0}, /*index=1*/f32[]) tuple(%b, %c)
    ... }'''
    >>> computations, entry = count_instructions(text)
    >>> entry, sorted(computations[entry].items())
    ('%main', [('constant', 1), ('negate', 1), ('parameter', 1), ('tuple', 1)])
    """
    computations, entry, current = {}, None, None
    for line in hlo_text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():  # a computation's header or its closing brace
            if line.rstrip().endswith("{") and not line.startswith("HloModule"):
                words = line.split()
                name = words[1] if words[0] == "ENTRY" else words[0]
                current = computations.setdefault(name, collections.Counter())
                entry = name if words[0] == "ENTRY" else entry
            elif line.startswith("}"):
                current = None
            continue
        statement = line.strip().removeprefix("ROOT ")
        if current is None or " = " not in statement:
            continue
        current[_opcode(_COMMENT.sub("", statement.split(" = ", 1)[1]).lstrip())] += 1
    return computations, entry


def _opcode(rest):
    """The opcode of `SHAPE opcode(operands), attributes`; a tuple shape is parenthesized and may nest."""
    if rest.startswith("("):
        depth = 0
        for end, char in enumerate(rest):
            depth += (char == "(") - (char == ")")
            if depth == 0:
                break
        rest = rest[end + 1:]
    else:
        rest = rest.split(" ", 1)[1]
    return rest.lstrip().split("(", 1)[0]


def summarize(before, after):
    """The counts of one program from its HLO text before and after XLA's optimisation.

    Returns:
        `hlo_instructions` (before optimisation, every computation),
        `optimized_instructions` (after, every computation, fused bodies
        included), `entry_instructions` (the top-level instructions of the
        optimized entry computation, what the runtime executes one by one),
        `fusions` (those that are fusions), `working_instructions` (those that
        run work, not parameters, constants, tuples or bitcasts: the proxy for
        kernels per step) and `entry_opcodes` (their opcodes, most frequent first).
    """
    computations, _ = count_instructions(before)
    optimized, entry = count_instructions(after)
    top = optimized[entry]
    working = collections.Counter({op: n for op, n in top.items() if op not in NO_WORK})
    return {
        "hlo_instructions": sum(sum(c.values()) for c in computations.values()),
        "optimized_instructions": sum(sum(c.values()) for c in optimized.values()),
        "entry_instructions": sum(top.values()),
        "fusions": top["fusion"],
        "working_instructions": sum(working.values()),
        "entry_opcodes": dict(working.most_common()),
    }


@contextlib.contextmanager
def watch_compiles():
    """Collect, under JAX, the seconds spent tracing and compiling the training step while the block runs.

    Wrap the model's first `train_on_batch` (or `fit`) in it. Yields a dict
    that fills in when the block ends: `trace_seconds` (tracing and lowering to
    StableHLO), `compile_seconds` (XLA's compilation, or reading it back from
    JAX's persistent cache) and `persistent_cache_hits`. Other backends: the
    dict stays empty.
    """
    import keras

    found = {}
    if keras.backend.backend() != "jax":
        yield found
        return
    import jax

    seconds = {"trace_seconds": 0.0, "compile_seconds": 0.0}
    hits, pending = [], []  # a cache hit is recorded inside the compile event of its function, which names it
    active = [True]  # where this JAX cannot unregister a listener, it stays, doing nothing

    def on_duration(event, duration, **kwargs):
        if not active:
            return
        step = STEP in str(kwargs.get("fun_name", ""))
        if event in JAX_EVENTS and step:
            seconds[JAX_EVENTS[event]] += duration
        if JAX_EVENTS.get(event) == "compile_seconds":
            hits.extend(pending if step else [])
            pending.clear()

    def on_event(event, **kwargs):
        if active and event == JAX_CACHE_HIT:
            pending.append(event)

    monitoring = jax.monitoring
    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    try:
        yield found
    finally:
        active.clear()
        for name, listener in (("unregister_event_duration_listener", on_duration),
                               ("unregister_event_listener", on_event)):
            if hasattr(monitoring, name):
                getattr(monitoring, name)(listener)
        found.update(seconds, persistent_cache_hits=len(hits))


def unavailable(reason):
    """What `compiled_train_step` returns where there is nothing to count."""
    return {"available": False, "reason": reason}


def compiled_train_step(model, x, y):
    """The counts (`summarize`) of the training step `fit` and `train_on_batch` run for batches like `(x, y)`.

    Call it after the model's first `train_on_batch`: the optimizer and metric
    variables exist then. JAX: `jax.jit(model.train_step)` lowered with the
    trainer's state, the function Keras jits itself, so its compiled program
    is found in JAX's cache (no second compilation). TensorFlow: the step
    under `tf.function(jit_compile=True)` as Keras compiles it with XLA on
    (`jit_compile=True`); counting compiles it once more. Without XLA
    (TensorFlow's op-by-op step) and under PyTorch there is no HLO: the
    result says so.

    Returns:
        `summarize`'s counts with `available: True`, `source` and
        `count_seconds` (lowering, compiling and counting here), or
        `available: False` and the `reason`.

    Example:
    >>> from upanets_keras.benchmark import prepare_model
    >>> model, x, y, _, _ = prepare_model(filters=4, image_size=16, batch_size=8)
    >>> _ = model.train_on_batch(x, y)
    >>> counts = compiled_train_step(model, x, y)
    >>> counts["available"] or "XLA" in counts["reason"]
    True
    """
    import keras

    backend = keras.backend.backend()
    if not model.optimizer or not model.optimizer.built:
        raise ValueError("compiled_train_step needs a model that has run one train_on_batch (its optimizer is "
                         f"built then). Received: model={model.name} with an unbuilt optimizer")
    start = time.perf_counter()
    if backend == "jax":
        import jax

        state = tuple([v.value for v in variables] for variables in (
            model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
            model.metrics_variables))
        lowered = jax.jit(model.train_step, donate_argnums=0).lower(
            state, (jax.numpy.asarray(x), jax.numpy.asarray(y), None))
        before, after = lowered.as_text(dialect="hlo"), lowered.compile().as_text()
        source = "jax.jit(model.train_step), the step Keras' JAX trainer jits"
    elif backend == "tensorflow":
        if not model.jit_compile:
            return unavailable("TensorFlow runs this step without XLA (op by op): no HLO to count; "
                               "--jit-compile on compiles it with XLA")
        import tensorflow as tf

        ir = tf.function(model.train_step, jit_compile=True).experimental_get_compiler_ir((tf.constant(x),
                                                                                           tf.constant(y)))
        before, after = ir(stage="hlo"), ir(stage="optimized_hlo")
        source = "tf.function(model.train_step, jit_compile=True), as Keras' TensorFlow trainer compiles it"
    else:
        return unavailable(f"the {backend} backend compiles no XLA program: no HLO to count")
    return {"available": True, "source": source, **summarize(before, after),
            "count_seconds": time.perf_counter() - start}


def describe(counts):
    """`compiled_train_step`'s result (with `watch_compiles`' timings) as one line.

    Example:
    >>> describe(unavailable("no XLA"))
    'compiled step: not available (no XLA)'
    """
    if not counts["available"]:
        return f"compiled step: not available ({counts['reason']})"
    line = (f"compiled step: {counts['entry_instructions']:,} top-level instructions, {counts['fusions']:,} of them "
            f"fusions ({counts['working_instructions']:,} doing work); {counts['hlo_instructions']:,} HLO "
            "instructions before optimisation")
    if counts.get("compile_seconds") is not None:
        cached = " (read from the persistent cache)" if counts.get("persistent_cache_hits") else ""
        line += f"; compiled in {counts['compile_seconds']:.1f} s{cached}"
    return line

"""A threaded grid for Triton's interpreter: every program of a launch on its own Python
thread, so that programs which wait for each other (`tl.atomic_poll`, the split scan's
meetings in kernels/triton_backend/exchange.py) can run on CPU.

Triton's interpreter runs the programs of a grid one after another, so a program that
waits for a later one waits forever (or times out). Here they run on threads, and the
scheduling is cooperative and deterministic: one program runs at a time, program 0 first,
and a program hands over only while it waits in `atomic_poll`. A kernel whose programs
meet correctly completes. A kernel that reads a partner's data without waiting for it
reads it before the partner has written it, every run, so a missing barrier shows up as
wrong values rather than by luck. What this cannot show: the interpreter's memory is
sequentially consistent, so a missing release, acquire or fence is invisible here; the
compiled PTX (red.release, fence.acquire) and a GPU run check those.

It replaces private parts of triton 3.9's interpreter (GridExecutor.__call__, the
builder's program id and atomic_poll) inside `with threaded_grid():` and restores them.
The replacement atomic_poll also accepts a poll without a timeout, which triton 3.9's
interpreter rejects (AttributeError in create_atomic_poll), and gives every wait at most
`max_wait_s` so that a kernel that deadlocks fails instead of hanging.
"""

import contextlib
import inspect
import threading
import time

HANDOVER_S = 1e-5  # how long a waiting program sleeps after handing over


@contextlib.contextmanager
def threaded_grid(max_wait_s: float = 60.0):
    from triton.runtime import interpreter as I

    builder = I.interpreter_builder
    local = threading.local()
    baton = threading.Lock()  # held by the one program that runs
    failed: list[BaseException] = []
    original = (I.GridExecutor.__call__, builder.__dict__.get("create_get_program_id"))
    original_poll = type(builder).create_atomic_poll

    def program_id(axis):
        return I.TensorHandle(I.np.array([local.idx[axis]], dtype=I.np.int32), I.tl.int32)

    def poll(ptr, expected, timeout_ns, sem, scope):
        limit_ns = timeout_ns.data.item() if hasattr(timeout_ns, "data") else None
        limit_ns = min(limit_ns, int(max_wait_s * 1e9)) if limit_ns is not None else int(max_wait_s * 1e9)
        once = I.TensorHandle(I.np.array(0, dtype=I.np.int64), I.tl.int64)  # check each element once
        start = time.perf_counter_ns()
        while True:
            got = original_poll(builder, ptr, expected, once, sem, scope)
            if got.data.all() or failed or time.perf_counter_ns() - start >= limit_ns:
                return got
            baton.release()
            time.sleep(HANDOVER_S)
            baton.acquire()

    def run(self, *args_dev, **kwargs):
        argspec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        for hook in self.pre_run_hooks:
            hook(*args_hst, **kwargs_hst)
        patch_scope = I._patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {name: a if name in self.constexprs else I._implicit_cvt(a) for name, a in args.items()}
            grid = self.grid(args) if callable(self.grid) else self.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            builder.set_grid_dim(*grid)
            first_holds = threading.Event()

            def program(idx):
                with baton:
                    first_holds.set()
                    local.idx = idx
                    try:
                        self.fn(**args)
                    except BaseException as e:  # re-raised by the launcher below
                        failed.append(e)

            indices = [(x, y, z) for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
            threads = [threading.Thread(target=program, args=(idx,), daemon=True) for idx in indices]
            threads[0].start()
            first_holds.wait()  # program 0 runs first; the others queue behind it
            for t in threads[1:]:
                t.start()
            for t in threads:
                t.join()
        finally:
            patch_scope.restore()
        if failed:
            raise failed[0]
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    I.GridExecutor.__call__ = run
    builder.create_get_program_id = program_id
    builder.create_atomic_poll = poll
    try:
        yield
    finally:
        I.GridExecutor.__call__ = original[0]
        for name, saved in (("create_get_program_id", original[1]), ("create_atomic_poll", None)):
            if saved is None:
                builder.__dict__.pop(name, None)
            else:
                setattr(builder, name, saved)

"""The dashboard: `python app.py` opens one page that takes a person from a dataset to a tuned
model they can talk to. This file is the map of the page: the tabs are built in tuning/ui/<tab>.py,
and only what crosses between tabs is wired here. Training runs in its own process (tuning/runs/runner.py);
this process never trains.

    python app.py [--host 127.0.0.1] [--port 7860] [--workspace DIR] [--data-dir DIR ...] [--share] [--auth USER:PASS]

(No `from __future__ import annotations`: Gradio reads the gr.OAuthProfile and gr.Request type
hints of the handlers here at runtime.)
"""

import argparse
import os
import sys

import gradio as gr
from starlette.middleware import Middleware

from tuning import paths
from tuning import runs
from tuning.ship import space
from tuning.ui import dataset_tab, evaluation_tab, export_tab, live_tab, playground_tab, runs_tab, train_tab
from tuning.ui import access, common, frame_guard, theme, upload_gate
from tuning.ui.access import public
from tuning.ui.common import AppContext, bind, run_picker_update

def oauth_installed() -> bool:
    """gr.LoginButton needs gradio's `oauth` extra (authlib, itsdangerous)."""
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("authlib", "itsdangerous"))


def access_row(ctx: AppContext) -> None:
    """On a Space: sign in with Hugging Face and/or type the Space's password to act. A visitor
    without either still browses runs, follows Live, views evaluations, uses the Playground on
    finished runs and inspects the demo dataset."""
    settings = ctx.settings
    with gr.Row(equal_height=True):
        note = gr.Markdown(space.refusal_message(None, settings))  # names the ways this Space offers
        if settings.oauth and oauth_installed():  # else a LoginButton fails the page's build or launch
            login = gr.LoginButton(scale=1)
            check, *rest = login.load_event_to_attach  # Gradio's own "am I signed in?" on page load
            login.load_event_to_attach = (public(check), *rest)
        if settings.password_set:
            password = gr.Textbox(label="Space password (to train)", type="password", scale=2)
            unlock_btn = gr.Button("Unlock training", scale=1)

            owner_pass = gr.Textbox(visible=False)  # the upload pass, handed to this browser's cookie

            def do_unlock(text: str, request: gr.Request):
                """Unlock this session with the Space's password (an API client calls this first). The box
                is emptied at once: the password stays in no output, history or API listing. An unlocked
                browser also gets the pass that lets it upload (tuning/ui/upload_gate.py)."""
                message = access.unlock(ctx, request, text)
                passed = upload_gate.issue_pass(ctx, access.UNLOCK_TTL_S) if access.is_owner(ctx, request) else ""
                return message, "", passed

            # Undocumented: callable by name (API clients unlock first), listed nowhere.
            for trigger, named in ((unlock_btn.click, dict(api_name="unlock", api_visibility="undocumented")),
                                   (password.submit, dict(api_visibility="private"))):
                trigger(public(do_unlock), password, [note, password, owner_pass], **named) \
                    .then(None, owner_pass, None, js=upload_gate.owner_pass_js(access.UNLOCK_TTL_S))


# The tabs, in the order a person works through them: (id, label, module with build(ctx) -> Parts).
TABS = (("dataset", "Dataset", dataset_tab), ("train", "Train", train_tab), ("live", "Live", live_tab),
        ("playground", "Playground", playground_tab), ("runs", "Runs", runs_tab),
        ("evaluation", "Evaluation", evaluation_tab), ("export", "Export", export_tab))


def remember_pick(tab: str, kept, run_id):
    """The runs this browser picked, by tab, with `run_id` now picked in `tab` (gr.BrowserState)."""
    kept = dict(kept) if isinstance(kept, dict) else {}
    if isinstance(run_id, str) and run_id:
        kept[tab] = run_id
    return kept


def offered(picker: dict, run_id: str | None) -> dict:
    """A picker that offers only some runs (Evaluation: those with something to evaluate; Export:
    finished ones) opens on `run_id` when it offers it, else on its newest run."""
    choices = picker.get("choices") or []
    return {**picker, "value": run_id if run_id in choices else (choices[0] if choices else None)}


def open_examples_in_dataset(tabs, evaluation, data) -> None:
    """A click in the Evaluation tab's hardest examples opens that row in the Dataset tab's token view."""
    def open_example(request):
        return {tabs: gr.Tabs(selected="dataset"), data.row_request: request}

    evaluation.row_request.change(public(open_example), evaluation.row_request, [tabs, data.row_request],
                                  api_visibility="private")


# The files Gradio keeps for this page (uploads, the copies it serves for downloads): every 30 min the
# ones older than an hour are removed, and all of them at a restart. Nothing is lost: an inspected
# upload is copied into <workspace>/datasets, and a download is readied again at each pick.
CACHE_EXPIRY = (1800, 3600)


def app_context(workspace, data_dirs=(), settings: space.SpaceSettings | None = None) -> AppContext:
    # From the --workspace as given (None: the default), so a Space without /data gets its banner.
    settings = settings or space.space_settings(workspace=workspace)
    return AppContext(paths.resolve_workspace(workspace), list(data_dirs), settings)


def build_demo(workspace, data_dirs=(), settings: space.SpaceSettings | None = None,
               context: AppContext | None = None) -> gr.Blocks:
    ctx = context or app_context(workspace, data_dirs, settings)
    with gr.Blocks(title="QLoRA fine-tuning dashboard", delete_cache=CACHE_EXPIRY) as demo:
        # The workspace's path is for its owner: a public Space's page shows no path of its machine.
        where = "" if ctx.settings.train_requires_auth else f" Workspace: `{ctx.workspace}`"
        gr.Markdown(f"## QLoRA fine-tuning dashboard\nDataset → Train → Live → Playground → Evaluation → Export.{where}")
        if space.banner(ctx.settings):
            gr.Markdown(space.banner(ctx.settings))
        if ctx.settings.train_requires_auth:
            access_row(ctx)
        with gr.Tabs() as tabs:
            parts = []
            for tab_id, label, module in TABS:
                with gr.Tab(label, id=tab_id):
                    parts.append(module.build(ctx))
        data, train, live, play, runs_ui, evaluation, exported = parts

        # Inspecting a dataset fills the Train form's dataset, format and column map; the form's base
        # model, max_length and completions-only choice drive the Dataset tab's token counts; "use the
        # suggested max_length" sets the form's.
        # (Public on a Space: they only copy values between components of one page.)
        for source, target in ((data.dataset, train.dataset), (data.dataset_format, train.dataset_format),
                               (data.column_map, train.column_map), (train.base_model, data.base_model),
                               (train.max_length, data.max_length), (train.completions_only, data.completions_only)):
            source.change(public(lambda value: value), source, target, api_visibility="private")
        data.use_max_length.click(public(lambda value: value), data.suggested, train.max_length,
                                  api_visibility="private")
        # The browser keeps the run a person picked in each tab (picking one, starting one, opening one
        # from the Runs tab), and a fresh page opens it again while it exists.
        pickers = {"live": live.run, "playground": play.run, "evaluation": evaluation.run,
                   "export": exported.run, "runs": runs_ui.run}
        picked = gr.BrowserState({}, storage_key=train_tab.storage_key(ctx, "picked-runs"),
                                 secret=train_tab.storage_key(ctx, "picked-runs"))
        for tab, picker in pickers.items():
            picker.input(public(bind(remember_pick, tab)), [picked, picker], picked,
                         show_progress="hidden", api_visibility="private")

        # A started run is followed in Live at once; the Playground's picker learns of it, and opens on
        # it when nothing was picked there (a first run is then the one to talk to).
        def follow_started(run_id, played, kept):
            return {tabs: gr.Tabs(selected="live"), live.run: run_picker_update(ctx, run_id),
                    play.run: run_picker_update(ctx, played or run_id), picked: remember_pick("live", kept, run_id)}

        train.started_run.change(follow_started, [train.started_run, play.run, picked],
                                 [tabs, live.run, play.run, picked], api_visibility="private")

        # The Runs tab opens its picked run in Live or in the Playground.
        def open_live(run_id, kept):
            return {tabs: gr.Tabs(selected="live"), live.run: run_picker_update(ctx, run_id),
                    picked: remember_pick("live", kept, run_id)}

        def open_playground(run_id, kept):
            return {tabs: gr.Tabs(selected="playground"), play.run: run_picker_update(ctx, run_id),
                    picked: remember_pick("playground", kept, run_id)}

        # "Tune on my votes" in the Playground fills the Train form with a DPO run from that run's adapter
        # (the Playground wrote the pairs and made the config) and opens the Train tab; nothing starts.
        def fill_train_form(values):
            if not values:
                return gr.skip()
            return {tabs: gr.Tabs(selected="train"),
                    **{widget: values[name] for name, widget in zip(train_tab.FORM_FIELDS, train.form)
                       if name in values}}

        play.tune_config.change(public(fill_train_form), play.tune_config, [tabs, *train.form],
                                api_visibility="private")
        open_examples_in_dataset(tabs, evaluation, data)
        runs_ui.open_live.click(public(open_live), [runs_ui.run, picked], [tabs, live.run, picked],
                             api_visibility="private")
        runs_ui.open_play.click(public(open_playground), [runs_ui.run, picked], [tabs, play.run, picked],
                             api_visibility="private")

        # A fresh page (a reload, a second browser, an app restart) opens in every tab that picks a run
        # the one this browser picked there, while it exists, else the active run, else the newest; and
        # lists the runs in the Runs tab: one event reading one listing of the workspace (with 500 runs,
        # a listing per picker made a page load take seconds: bench/many_runs.py).
        runs_listed = {name: getattr(runs_ui, name) for name in runs_tab.REFRESHED}

        def fresh_page(kept=None):
            with runs.one_listing():
                run_id = runs.default_run(ctx.workspace)
                ids = runs.run_ids(ctx.workspace)
                mine = {tab: run for tab, run in (kept if isinstance(kept, dict) else {}).items() if run in ids}
                evaluated, finished = evaluation_tab.refreshed(ctx, None), export_tab.refreshed(ctx, None)
                return {live.run: run_picker_update(ctx, mine.get("live", run_id)),
                        play.run: run_picker_update(ctx, mine.get("playground", run_id)),
                        # Evaluation's own default is its newest evaluated run
                        evaluation.run: offered(evaluated, mine.get("evaluation", evaluated.get("value") or run_id)),
                        exported.run: offered(finished, mine.get("export", run_id)),
                        **{runs_listed[name]: value
                           for name, value in runs_tab.refreshed(ctx, mine.get("runs")).items()}}

        demo.load(public(fresh_page), picked, [live.run, play.run, evaluation.run, exported.run,
                                               *runs_listed.values()], api_visibility="private")
        train_tab.restore_on_load(demo, train, ctx)
    # On a Space, everything above that is not public(...) is for the owner alone.
    access.deny_by_default(demo, ctx)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    on_space = paths.on_space()
    parser = argparse.ArgumentParser(description="The QLoRA fine-tuning dashboard.")
    parser.add_argument("--host", default="0.0.0.0" if on_space else "127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--workspace", help="where runs live (default: $TUNING_WORKSPACE, else /data/tuning on a "
                        "Space with persistent storage, else ./workspace)")
    parser.add_argument("--data-dir", action="append", default=[], metavar="DIR",
                        help="a folder whose files the page may read (repeatable)")
    parser.add_argument("--share", action="store_true", help="a public gradio.live link (needs --auth)")
    parser.add_argument("--auth", metavar="USER:PASS", help="require a login (or set TUNING_AUTH)")
    return parser.parse_args(argv)


# Gradio's queue looks for work every 1 ms while idle (and for progress every 10 ms): measured at
# about 8% of a core with nobody on the page, taken straight from training on a 2-core CPU
# (bench/ui_overhead.py prints the app's share). Every 20 ms / 100 ms is still instant for a person.
QUEUE_IDLE_POLL_S = 0.02
PROGRESS_IDLE_POLL_S = 0.1


# Gradio 6.31's status tracker announces a finished event as i18n("common.complete"), a key its English
# strings lack, so the page said "common.complete" after Start or Queue it. The words it means:
I18N = gr.I18n(en={"common.complete": "Complete"})
# Requests waiting in Gradio's queue, all visitors together: one more is answered "queue is full"
# (held in memory, a flood of joins would grow without bound).
QUEUE_MAX_SIZE = 64


def calm_queue(demo: gr.Blocks) -> bool:
    """Slow the queue's idle polling (private Gradio attributes: tests/test_ui_wiring.py fails if
    they are renamed; the app still runs, only busier)."""
    queue = getattr(demo, "_queue", None)
    names = ("sleep_when_free", "progress_update_sleep_when_free")
    if queue is None or not all(hasattr(queue, n) for n in names):
        return False
    queue.sleep_when_free, queue.progress_update_sleep_when_free = QUEUE_IDLE_POLL_S, PROGRESS_IDLE_POLL_S
    return True


def follow_queue(workspace) -> None:
    """Queued runs start when the machine is free: one look now (a queue left while the app was down,
    or by a trainer killed outright), then every runner.QUEUE_POLL_S in a daemon thread. The trainer
    that finishes starts the next one itself; runner.start_next's lock makes each start happen once."""
    import threading

    from tuning.runs import runner

    workspace = paths.resolve_workspace(workspace)
    try:
        started = runner.start_next(workspace)
    except Exception as exc:  # noqa: BLE001 - the page still opens; the watch tries again
        print(f"the queue could not be read or started: {type(exc).__name__}: {exc}", file=sys.stderr)
    else:
        if started:
            print(f"started queued run {started}", flush=True)
    threading.Thread(target=runner.watch_queue, args=(workspace,), name="queue", daemon=True).start()


def prune_on_schedule(every_s: float = CACHE_EXPIRY[0]):
    """The download copies the page served (common.served_copy) expire on the same schedule as
    Gradio's own cache, also when nobody readies another download. Returns the event that ends it."""
    import threading

    stop = threading.Event()

    def prune() -> None:
        while not stop.wait(every_s):
            common.prune_served_copies()

    threading.Thread(target=prune, name="served copies", daemon=True).start()
    return stop


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = space.space_settings(workspace=args.workspace)
    try:  # the launch policy (tuning/ship/space.py): never expose the page without a login
        kwargs = space.launch_kwargs(args, settings)
    except space.LaunchRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        raise SystemExit(2) from None
    ctx = app_context(args.workspace, args.data_dir, settings)
    # A full queue answers "busy, try again" instead of holding every waiting request in memory.
    demo = build_demo(args.workspace, context=ctx).queue(default_concurrency_limit=4, max_size=QUEUE_MAX_SIZE)
    calm_queue(demo)
    follow_queue(args.workspace)
    prune_on_schedule()
    app_kwargs = frame_guard.app_kwargs()  # an idle page draws no frames
    app_kwargs["middleware"].append(Middleware(upload_gate.UploadGate, ctx=ctx))  # a Space's uploads: owner only
    demo.launch(app_kwargs=app_kwargs, i18n=I18N, css=theme.CSS, **kwargs)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""End-to-end run of goose-api on a real language model, through its HTTP API only.

Starts SmolLM2-135M behind llama.cpp's OpenAI-compatible server (scripts/local-llm.sh), the
release daemon against it with the MCP reference server as a stdio extension, and then
walks the main job: sessions, streaming, a tool call, summarize, end, a config edit, a
manifest and a plugin dropped into the extensions directory, and a restart. Each step prints
its outcome and duration. Everything listens on 127.0.0.1; every process started here is
stopped by PID at the end.

Usage: scripts/e2e.py [--skip-build]
"""

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "e2e-admin-key-0123456789abcdef"
PLUGIN_LIBRARY = "target/release/libgoose_plugin_calc.so"
TIMINGS = []


def check(condition, message):
    """Raise RuntimeError with `message` unless `condition` holds.

    Unlike assert, python -O keeps this check."""
    if not condition:
        raise RuntimeError(message)


class RecordingProxy(http.server.ThreadingHTTPServer):
    """Forwards the daemon's provider requests to the model server and keeps each JSON body,
    so the run can check what the daemon sent the model. Responses, streamed or not, are
    passed through as they arrive and end when the connection closes."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.bodies = []
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.daemon_threads = True

    @property
    def port(self):
        return self.server_address[1]


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0 lets a response end when the connection closes, so a stream needs no framing.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.forward(None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            self.server.bodies.append(json.loads(body))
        except ValueError:
            self.server.bodies.append(None)
        self.forward(body)

    def forward(self, body):
        headers = {"content-type": self.headers.get("content-type", "application/json")}
        req = urllib.request.Request(self.server.upstream + self.path, data=body,
                                     method=self.command, headers=headers)
        try:
            response = urllib.request.urlopen(req, timeout=600)
        except urllib.error.HTTPError as error:
            response = error
        self.send_response(response.status)
        self.send_header("content-type", response.headers.get("content-type", "application/json"))
        self.end_headers()
        while chunk := response.read1(65536):
            self.wfile.write(chunk)
            self.wfile.flush()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(method, url, body=None, headers=None, timeout=300):
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"x-api-key": KEY}
    if body is not None:
        all_headers["content-type"] = "application/json"
    all_headers.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(url, seconds, headers=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


def step(name, action):
    print(f"== {name}", flush=True)
    started = time.time()
    try:
        detail = action()
    except Exception as error:  # the run reports every failure and stops
        elapsed = time.time() - started
        TIMINGS.append((name, elapsed, "FAILED"))
        print(f"   FAILED after {elapsed:.1f} s: {error}", flush=True)
        raise
    elapsed = time.time() - started
    TIMINGS.append((name, elapsed, "ok"))
    print(f"   ok in {elapsed:.1f} s: {detail}", flush=True)
    return detail


class Run:
    def __init__(self, skip_build):
        self.skip_build = skip_build
        self.work = tempfile.mkdtemp(prefix="goose-api-e2e-")
        self.extensions = os.path.join(self.work, "extensions")
        os.makedirs(self.extensions)
        self.model_port = free_port()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.model_server = None
        self.proxy = None
        self.daemon = None
        self.session = None

    def config(self, model):
        everything = os.path.join(
            ROOT, "tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
        )
        return "\n".join([
            f"port: {self.port}",
            f"api_key: {KEY}",
            "provider: openai",
            f"model: {model}",
            "providers:",
            "  openai:",
            f"    base_url: http://127.0.0.1:{self.proxy.port}/v1",
            "    max_tokens: 96",
            "    temperature: 0",
            "agent:",
            "  system_prompt: You are a helpful assistant. Answer in one short sentence.",
            # llama.cpp's server cannot stream with tool_choice auto, and this model does not
            # choose tools on its own, so tools are called only when a request forces one.
            "  tool_choice: none",
            f"extensions_dir: {self.extensions}",
            "extensions:",
            "  everything:",
            "    type: stdio",
            "    cmd: node",
            f"    args: [{json.dumps(everything)}]",
            "    available_tools: [echo, get-sum]",
            "log:",
            "  format: json",
            "",
        ])

    def build(self):
        if self.skip_build:
            return "skipped (--skip-build)"
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=ROOT, check=True)
        subprocess.run(["bash", "tests/peers/install.sh"], cwd=ROOT, check=True)
        return "release binary and test peers ready"

    def start_model(self):
        log = open(os.path.join(self.work, "model.log"), "w")
        self.model_server = subprocess.Popen(
            [os.path.join(ROOT, "scripts/local-llm.sh"), "serve", str(self.model_port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for(f"http://127.0.0.1:{self.model_port}/v1/models", 1800)
        self.proxy = RecordingProxy(f"http://127.0.0.1:{self.model_port}")
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        return (f"SmolLM2-135M on 127.0.0.1:{self.model_port}, "
                f"through a recording proxy on 127.0.0.1:{self.proxy.port}")

    def start_daemon(self):
        config = os.path.join(self.work, "config.yaml")
        if not os.path.exists(config):
            with open(config, "w") as file:
                file.write(self.config("smollm2-135m"))
        log = open(os.path.join(self.work, "daemon.log"), "a")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.work}
        self.daemon = subprocess.Popen(
            [os.path.join(ROOT, "target/release/goose-api"), "--config", config],
            cwd=self.work, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        wait_for(f"{self.base}/ready", 60)
        return f"goose-api on {self.base}"

    def wait_extension(self, name):
        deadline = time.time() + 60
        while time.time() < deadline:
            status, body = request("GET", f"{self.base}/extensions/{name}")
            if status == 200 and json.loads(body).get("state") == "running":
                listed = json.loads(body)
                check(listed.get("tools"), f"extension {name} runs but lists no tools: {body}")
                return listed
            time.sleep(0.5)
        raise RuntimeError(f"extension {name} is not running: {body}")

    def start_session(self):
        self.wait_extension("everything")
        status, body = request("POST", f"{self.base}/session/start",
                               {"prompt": "What is the capital of France?"})
        check(status == 200, body)
        answer = json.loads(body)
        check(answer["status"] == "success", body)
        check(answer["message"].strip(), f"empty answer: {body}")
        self.session = answer["session_id"]
        return f"session {self.session}: {answer['message']!r}"

    def reply(self):
        status, body = request("POST", f"{self.base}/session/reply",
                               {"prompt": "Say hello in French."})
        check(status == 200, body)
        answer = json.loads(body)
        check(answer["status"] == "success", body)
        check(answer["session_id"] == self.session, f"reply went to another session: {body}")
        check(answer["message"].strip(), f"empty answer: {body}")
        return repr(answer["message"])

    def stream(self):
        req = urllib.request.Request(
            f"{self.base}/sessions/{self.session}/reply",
            data=json.dumps({"prompt": "Name a color."}).encode(), method="POST",
            headers={"x-api-key": KEY, "content-type": "application/json",
                     "accept": "text/event-stream"},
        )
        kinds, text = [], ""
        with urllib.request.urlopen(req, timeout=300) as response:
            kind = None
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind:
                    kinds.append(kind)
                    if kind == "text":
                        text += json.loads(line.split(":", 1)[1])["text"]
                    if kind in ("finish", "error"):
                        break
        check(kinds and kinds[-1] == "finish", f"stream did not end with finish: {kinds}")
        check(text.strip(), f"no text before finish: {kinds}")
        return f"{kinds.count('text')} text events, then finish: {text!r}"

    def tool_call(self):
        body = {"prompt": "Use the echo tool to echo the word banana.",
                "tool_choice": {"tool": "everything__echo"}}
        sent_before = len(self.proxy.bodies)
        status, reply = request("POST", f"{self.base}/sessions/{self.session}/reply", body)
        check(status == 200, reply)
        answer = json.loads(reply)["message"]
        check(answer.strip(), f"empty answer: {reply}")
        status, detail = request("GET", f"{self.base}/sessions/{self.session}?limit=500")
        messages = json.loads(detail)["messages"]
        results = [part for message in messages if message["role"] == "tool"
                   for part in message["content"]]
        check(results, "no tool result stored")
        output = results[-1]["content"][0].get("text", "")
        check(not results[-1]["is_error"], f"tool failed: {results[-1]}")
        check("banana" in output, f"tool result lacks the echoed word: {output!r}")
        check(messages[-1]["role"] == "assistant",
              f"last message is not the answer: {messages[-1]}")
        # The request after the call must carry the tool's output to the model.
        sent = self.proxy.bodies[sent_before:]
        check(len(sent) >= 2, f"expected two provider requests, got {len(sent)}")
        fed_back = [m for m in sent[-1].get("messages", [])
                    if m.get("role") == "tool" and "banana" in json.dumps(m.get("content"))]
        check(fed_back, f"the last provider request has no tool result: {sent[-1]}")
        return (f"tool result {output!r} sent to the model in request {len(sent)} of the turn; "
                f"answer {answer!r}")

    def summarize(self):
        status, body = request("POST", f"{self.base}/session/summarize", {"session_id": self.session})
        check(status == 200, body)
        summary = json.loads(body)["message"]
        check(summary.strip(), f"empty summary: {body}")
        return repr(summary[:160])

    def end(self):
        status, body = request("POST", f"{self.base}/session/end", {"session_id": self.session})
        check(status == 200, body)
        status, after = request("POST", f"{self.base}/session/reply",
                                {"session_id": self.session, "prompt": "Still there?"})
        check(status == 409, f"reply to an ended session returned {status}: {after}")
        return f"{json.loads(body)['message']}; a reply after it gets {status}"

    def edit_model(self):
        config = os.path.join(self.work, "config.yaml")
        with open(config + ".tmp", "w") as file:
            file.write(self.config("smollm2-135m-renamed"))
        os.replace(config + ".tmp", config)
        deadline = time.time() + 10
        while time.time() < deadline:
            status, body = request("GET", f"{self.base}/provider/config")
            if json.loads(body).get("model") == "smollm2-135m-renamed":
                return body
            time.sleep(0.1)
        raise RuntimeError(f"model unchanged: {body}")

    def drop_extensions(self):
        everything = os.path.join(
            ROOT, "tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
        )
        manifest = os.path.join(self.extensions, "dropped.yaml")
        with open(manifest, "w") as file:
            file.write(f"type: stdio\ncmd: node\nargs: [{json.dumps(everything)}]\n"
                       "available_tools: [echo]\n")
        dropped = self.wait_extension("dropped")
        listed = [f"dropped: {dropped['tools']}"]
        plugin = os.path.join(self.extensions, "calc.so")
        shutil.copy(os.path.join(ROOT, PLUGIN_LIBRARY), plugin)
        os.chmod(plugin, 0o644)
        calc = self.wait_extension("calc")
        listed.append(f"calc: {calc['tools']}")
        check(dropped["tools"] == ["echo"], f"dropped lists {dropped['tools']}")
        check("evaluate" in calc["tools"], f"calc lists {calc['tools']}")
        status, body = request("GET", f"{self.base}/extensions/list")
        names = json.loads(body)["extensions"]
        check({"calc", "dropped", "everything"} <= set(names), body)
        return f"{'; '.join(listed)}; /extensions/list {body}"

    def restart(self):
        status, before = request("GET", f"{self.base}/sessions/{self.session}?limit=500")
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(timeout=60)
        check(code == 0, f"daemon exited with {code}")
        self.start_daemon()
        status, after = request("GET", f"{self.base}/sessions/{self.session}?limit=500")
        check(status == 200, after)
        check(json.loads(after)["messages"] == json.loads(before)["messages"],
              "history differs after the restart")
        return f"{len(json.loads(after)['messages'])} messages read back after the restart"

    def stop(self):
        if self.proxy:
            self.proxy.shutdown()
        for process in (self.daemon, self.model_server):
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def main():
    run = Run(skip_build="--skip-build" in sys.argv)
    steps = [
        ("build", run.build),
        ("start the model server", run.start_model),
        ("start goose-api", run.start_daemon),
        ("start a session", run.start_session),
        ("reply without session_id", run.reply),
        ("stream a reply over SSE", run.stream),
        ("call an MCP tool with a forced tool choice", run.tool_call),
        ("summarize", run.summarize),
        ("end the session", run.end),
        ("change model in the config file", run.edit_model),
        ("drop a manifest and a plugin into the extensions directory", run.drop_extensions),
        ("restart and read the history back", run.restart),
    ]
    failed = False
    try:
        for name, action in steps:
            step(name, action)
    except Exception:
        failed = True
    finally:
        run.stop()
    print("\n| step | seconds | outcome |\n|---|---|---|")
    for name, elapsed, outcome in TIMINGS:
        print(f"| {name} | {elapsed:.1f} | {outcome} |")
    print(f"\nwork directory with logs: {run.work}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

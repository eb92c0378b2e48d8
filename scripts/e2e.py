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

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "e2e-admin-key-0123456789abcdef"
PLUGIN_LIBRARY = "target/release/libgoose_plugin_calc.so"
TIMINGS = []


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
            f"    base_url: http://127.0.0.1:{self.model_port}/v1",
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
        return f"SmolLM2-135M on 127.0.0.1:{self.model_port}"

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
                return json.loads(body)
            time.sleep(0.5)
        raise RuntimeError(f"extension {name} is not running: {body}")

    def start_session(self):
        self.wait_extension("everything")
        status, body = request("POST", f"{self.base}/session/start",
                               {"prompt": "What is the capital of France?"})
        answer = json.loads(body)
        assert status == 200, body
        assert answer["status"] == "success", body
        self.session = answer["session_id"]
        return f"session {self.session}: {answer['message']!r}"

    def reply(self):
        status, body = request("POST", f"{self.base}/session/reply",
                               {"prompt": "Say hello in French."})
        answer = json.loads(body)
        assert status == 200, body
        assert answer["status"] == "success", body
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
        assert kinds and kinds[-1] == "finish", kinds
        return f"{kinds.count('text')} text events, then finish: {text!r}"

    def tool_call(self):
        body = {"prompt": "Use the echo tool to echo the word banana.",
                "tool_choice": {"tool": "everything__echo"}}
        status, reply = request("POST", f"{self.base}/sessions/{self.session}/reply", body)
        assert status == 200, reply
        status, detail = request("GET", f"{self.base}/sessions/{self.session}?limit=500")
        messages = json.loads(detail)["messages"]
        results = [part for message in messages if message["role"] == "tool"
                   for part in message["content"]]
        assert results, "no tool result stored"
        output = results[-1]["content"][0].get("text", "")
        assert not results[-1]["is_error"], results[-1]
        return f"tool result {output!r}; answer {json.loads(reply)['message']!r}"

    def summarize(self):
        status, body = request("POST", f"{self.base}/session/summarize", {"session_id": self.session})
        assert status == 200, body
        return repr(json.loads(body)["message"][:160])

    def end(self):
        status, body = request("POST", f"{self.base}/session/end", {"session_id": self.session})
        assert status == 200, body
        return json.loads(body)["message"]

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
        status, body = request("GET", f"{self.base}/extensions/list")
        return f"{'; '.join(listed)}; /extensions/list {body}"

    def restart(self):
        status, before = request("GET", f"{self.base}/sessions/{self.session}?limit=500")
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(timeout=60)
        assert code == 0, f"daemon exited with {code}"
        self.start_daemon()
        status, after = request("GET", f"{self.base}/sessions/{self.session}?limit=500")
        assert status == 200, after
        assert json.loads(after)["messages"] == json.loads(before)["messages"]
        return f"{len(json.loads(after)['messages'])} messages read back after the restart"

    def stop(self):
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

// Node preload for the tests: every server listens on 127.0.0.1, whatever address the
// program asks for, because the test MCP servers otherwise listen on every interface.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "object" && args[0] !== null) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  } else if (typeof args[0] === "number" || typeof args[0] === "string") {
    const port = args[0];
    const callback = args.find((arg) => typeof arg === "function");
    return listen.call(this, port, "127.0.0.1", callback);
  }
  return listen.apply(this, args);
};

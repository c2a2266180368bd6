// Drives the real npm socket.io-client for the Python tests and the fan-out benchmark.
//
// Protocol: one JSON object per line. Commands arrive on stdin; everything the sockets do is
// reported on stdout. Each socket has a caller-chosen `name`. Commands:
//
//   {"cmd": "connect", "name": "a1", "url": "http://127.0.0.1:3001", "options": {...}}
//       io(url, {...options, forceNew: true}): one Manager (one Engine.IO session) per socket.
//   {"cmd": "emit", "name": "a1", "event": "x", "args": [...], "ack": 2000, "ref": 1}
//       with "ack" (ms), waits for the acknowledgement and reports {"type": "ack", ...}.
//   {"cmd": "state", "name": "a1", "ref": 2}   -> {"type": "state", connected, recovered, transport, ...}
//   {"cmd": "drop", "name": "a1"}              closes the Engine.IO connection as a network
//                                              failure would; the client reconnects by itself.
//   {"cmd": "silence", "name": "a1"}           stops sending anything (pongs included).
//   {"cmd": "disconnect", "name": "a1"}        socket.disconnect()
//   {"cmd": "quit"}                            (or end of stdin) disconnects everything, exits.
//
// Reports: {"type": "connect" | "connect_error" | "disconnect" | "upgrade" | "event" | "ack" |
// "state" | "error", "name": ..., ...}. Events carry "t": the arrival time in milliseconds since
// the epoch (performance.timeOrigin + performance.now()), comparable with Python's time.time().

import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const sockets = new Map();
const now = () => performance.timeOrigin + performance.now();

function report(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function transportOf(socket) {
  const engine = socket.io.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function connect({ name, url, options = {} }) {
  const socket = io(url, { ...options, forceNew: true });
  sockets.set(name, socket);
  socket.on("connect", () => {
    report({
      type: "connect",
      name,
      id: socket.id,
      recovered: socket.recovered === true,
      transport: transportOf(socket),
    });
  });
  socket.on("connect_error", (error) => {
    report({ type: "connect_error", name, message: error.message, data: error.data ?? null });
  });
  socket.on("disconnect", (reason) => {
    report({ type: "disconnect", name, reason });
  });
  socket.io.on("open", () => {
    socket.io.engine.on("upgrade", (transport) => {
      report({ type: "upgrade", name, transport: transport.name });
    });
  });
  socket.onAny((event, ...args) => {
    report({ type: "event", name, event, args, t: now() });
  });
}

function emit({ name, event, args = [], ack, ref }) {
  const socket = sockets.get(name);
  if (ack === undefined) {
    socket.emit(event, ...args);
    return;
  }
  socket.timeout(ack).emit(event, ...args, (error, ...answer) => {
    report({ type: "ack", name, ref, error: error ? error.message : null, args: answer });
  });
}

function state({ name, ref }) {
  const socket = sockets.get(name);
  report({
    type: "state",
    name,
    ref,
    connected: socket.connected,
    recovered: socket.recovered === true,
    transport: transportOf(socket),
    id: socket.id ?? null,
  });
}

function silence({ name }) {
  const engine = sockets.get(name).io.engine;
  // The engine answers pings through _sendPacket: replacing it on the instance mutes the client.
  engine._sendPacket = () => {};
}

function quit() {
  for (const socket of sockets.values()) {
    socket.disconnect();
  }
  // Let the close packets and frames leave before exiting.
  setTimeout(() => process.exit(0), 50);
}

const commands = {
  connect,
  emit,
  state,
  silence,
  quit,
  drop: ({ name }) => sockets.get(name).io.engine.close(),
  disconnect: ({ name }) => sockets.get(name).disconnect(),
};

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) {
    return;
  }
  let command;
  try {
    command = JSON.parse(line);
    const handler = commands[command.cmd];
    if (!handler) {
      throw new Error(`unknown command ${command.cmd}`);
    }
    if (command.name !== undefined && command.cmd !== "connect" && !sockets.has(command.name)) {
      throw new Error(`unknown socket ${command.name}`);
    }
    handler(command);
  } catch (error) {
    report({ type: "error", message: String(error), command: line.slice(0, 200) });
  }
});
lines.on("close", quit);

// @ts-check
// Routes HTTP/1.x requests by their Host header (name-based virtual hosting).
// A request starts "METHOD target HTTP/1.x\r\n", then header lines "Name: value\r\n", and the
// header block ends with an empty line ("\r\n\r\n"). The router waits for that whole block, so
// it can also refuse a request with no Host or two of them (RFC 9112 §3.2: 400).
// The connection goes to the backend chosen by its first request: a keep-alive client that
// later sends another Host on the same connection still reaches that backend.
/** @type {Record<string, string>} */
const hosts = { 'alpha.example': '127.0.0.1:8081', 'beta.example': '127.0.0.1:8082' };

const maxHeaderBytes = 16384;

/** @param {string} status @param {string} body */
function respond(status, body) {
  return 'HTTP/1.1 ' + status + '\r\n' +
    'Content-Type: text/plain\r\n' +
    'Content-Length: ' + body.length + '\r\n' +
    'Connection: close\r\n\r\n' + body;
}

proxy((data) => {
  // Refuse at once what cannot start a request line: a method (capital letters), then a space.
  if (!/^[A-Z]{1,20}( |$)/.test(data)) {
    return { close: respond('400 Bad Request', 'bad request\n') };
  }
  const end = data.indexOf('\r\n\r\n');
  if (end < 0) {
    if (data.length > maxHeaderBytes) return { close: respond('431 Request Header Fields Too Large', 'headers too large\n') };
    return { noop: true };
  }
  const lines = data.slice(0, end).split('\r\n');
  if (!/^[A-Z]{1,20} [\x21-\x7e]+ HTTP\/1\.[01]$/.test(lines[0])) {
    return { close: respond('400 Bad Request', 'bad request line\n') };
  }
  let host;
  for (let i = 1; i < lines.length; i++) {
    const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/.exec(lines[i]);
    if (!m) return { close: respond('400 Bad Request', 'bad header line\n') };
    if (m[1].toLowerCase() !== 'host') continue;
    if (host !== undefined) return { close: respond('400 Bad Request', 'more than one Host header\n') };
    host = m[2];
  }
  if (host === undefined) return { close: respond('400 Bad Request', 'no Host header\n') };
  // "name" or "name:port"; names are case-insensitive.
  const h = /^([a-z0-9.-]+)(?::\d{1,5})?$/i.exec(host);
  if (!h) return { close: respond('400 Bad Request', 'bad Host header\n') };
  const name = h[1].toLowerCase();
  if (!Object.hasOwn(hosts, name)) {
    return { close: respond('421 Misdirected Request', 'no site for host ' + name + '\n') };
  }
  return { remote: hosts[name] };
});

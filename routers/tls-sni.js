// @ts-check
// Routes TLS connections by the server name the client asks for (SNI), without terminating TLS:
// the backend holds the certificate and the session is end to end.
//
// A TLS connection opens with a ClientHello in handshake records:
//   record:     type(1) = 22, version(2), length(2), fragment
//   handshake:  type(1) = 1 (ClientHello), length(3), body
//   body:       client_version(2) random(32) session_id(1+n) cipher_suites(2+n)
//               compression_methods(1+n) extensions(2+n)
//   extension:  type(2) length(2) data; server_name is type 0:
//               list_length(2), then entries name_type(1) = 0 (host_name), length(2), name
// The router waits until the whole ClientHello is buffered (a large one may span records).
/** @type {Record<string, string>} */
const names = { 'alpha.test': '127.0.0.1:8443', 'beta.test': '127.0.0.1:9443' };

// A fatal TLS alert, unrecognized_name (112), sent in place of a ServerHello.
const unrecognizedName = '\x15\x03\x01\x00\x02\x02\x70';

/** @param {string} s @param {number} i */
function u8(s, i) { return s.charCodeAt(i); }
/** @param {string} s @param {number} i */
function u16(s, i) { return (s.charCodeAt(i) << 8) | s.charCodeAt(i + 1); }
/** @param {string} s @param {number} i */
function u24(s, i) { return (s.charCodeAt(i) << 16) | (s.charCodeAt(i + 1) << 8) | s.charCodeAt(i + 2); }

// The server name of a complete ClientHello body, '' when it has none, or null when malformed.
/** @param {string} body @returns {string | null} */
function serverName(body) {
  let p = 2 + 32;                              // client_version, random
  if (p + 1 > body.length) return null;
  p += 1 + u8(body, p);                        // session_id
  if (p + 2 > body.length) return null;
  p += 2 + u16(body, p);                       // cipher_suites
  if (p + 1 > body.length) return null;
  p += 1 + u8(body, p);                        // compression_methods
  if (p === body.length) return '';            // no extensions at all
  if (p + 2 > body.length) return null;
  const end = p + 2 + u16(body, p);
  if (end > body.length) return null;
  p += 2;
  while (p + 4 <= end) {
    const type = u16(body, p);
    const len = u16(body, p + 2);
    p += 4;
    if (p + len > end) return null;
    if (type === 0) {
      let q = p + 2;                           // skip list_length
      while (q + 3 <= p + len) {
        const nameType = u8(body, q);
        const nameLen = u16(body, q + 1);
        q += 3;
        if (q + nameLen > p + len) return null;
        if (nameType === 0) return body.slice(q, q + nameLen);
        q += nameLen;
      }
      return null;
    }
    p += len;
  }
  return '';
}

proxy((data) => {
  // Gather the handshake bytes of every complete record received so far.
  let hs = '';
  let p = 0;
  while (p + 5 <= data.length) {
    if (u8(data, p) !== 22 || u8(data, p + 1) !== 3) return { close: true }; // not a TLS handshake
    const len = u16(data, p + 3);
    if (len === 0 || len > 16384) return { close: true };
    if (p + 5 + len > data.length) break;
    hs += data.slice(p + 5, p + 5 + len);
    p += 5 + len;
  }
  if (p === 0 && data.length >= 1 && u8(data, 0) !== 22) return { close: true };
  if (hs.length >= 1 && u8(hs, 0) !== 1) return { close: true };   // first message is not a ClientHello
  if (hs.length < 4 || hs.length < 4 + u24(hs, 1)) return { noop: true };

  const name = serverName(hs.slice(4, 4 + u24(hs, 1)));
  if (name === null) return { close: true };
  const key = name.toLowerCase();
  if (!Object.hasOwn(names, key)) return { close: unrecognizedName };
  return { remote: names[key] };
});

// @ts-check
// Routes PostgreSQL connections by the database named in the client's StartupMessage.
//
// Every frontend message before startup is length-prefixed: int32 length (itself included),
// int32 code. A client may first ask for encryption (SSLRequest: length 8, code 80877103;
// GSSENCRequest: code 80877104); the router answers 'N' (not supported), and the client goes on
// in plain text with a StartupMessage: int32 length, int32 protocol (3.0 = 196608), then
// "key\0value\0" pairs ending with "\0". The backend gets the StartupMessage only, as if the
// client had connected to it directly. The database defaults to the user name, as in libpq.
/** @type {Record<string, string>} */
const databases = { alpha: '127.0.0.1:5433', beta: '127.0.0.1:5434' };

const sslRequest = 80877103;
const gssencRequest = 80877104;
const cancelRequest = 80877102;

/** @param {string} s @param {number} i */
function int32(s, i) {
  return ((s.charCodeAt(i) << 24) | (s.charCodeAt(i + 1) << 16) | (s.charCodeAt(i + 2) << 8) | s.charCodeAt(i + 3)) >>> 0;
}
/** @param {number} n */
function encode32(n) {
  return String.fromCharCode((n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}

// A backend ErrorResponse ('E'): fields of a type byte and a string, ending with a zero byte.
/** @param {string} code @param {string} message */
function errorResponse(code, message) {
  const fields = 'SFATAL\0VFATAL\0C' + code + '\0M' + message + '\0\0';
  return 'E' + encode32(4 + fields.length) + fields;
}

proxy((data) => {
  // Skip the encryption requests already answered; answer the last one if nothing follows it.
  let start = 0;
  while (data.length - start >= 8 && int32(data, start) === 8) {
    const code = int32(data, start + 4);
    if (code !== sslRequest && code !== gssencRequest) {
      return { close: errorResponse('08P01', 'unsupported request code ' + code) };
    }
    start += 8;
    if (start === data.length) return { noop: true, reply: 'N' };
  }
  if (data.length - start < 8) return { noop: true };

  const length = int32(data, start);
  const protocol = int32(data, start + 4);
  if (protocol === cancelRequest) return { close: true }; // carries no database to route by
  if (protocol >>> 16 !== 3) return { close: errorResponse('0A000', 'unsupported frontend protocol ' + (protocol >>> 16) + '.' + (protocol & 0xffff)) };
  if (length < 9 || length > 10000) return { close: errorResponse('08P01', 'invalid startup packet length') };
  if (data.length - start < length) return { noop: true };

  // key\0value\0 ... \0
  /** @type {Record<string, string>} */
  const params = Object.create(null);
  const fields = data.slice(start + 8, start + length).split('\0');
  if (fields.length < 2 || fields[fields.length - 1] !== '' || fields[fields.length - 2] !== '' || fields.length % 2 !== 0) {
    return { close: errorResponse('08P01', 'invalid startup packet layout') };
  }
  for (let i = 0; i + 1 < fields.length - 2; i += 2) params[fields[i]] = fields[i + 1];

  const user = params.user !== undefined ? params.user : '';
  if (user === '') return { close: errorResponse('28000', 'no PostgreSQL user name specified in startup packet') };
  const database = params.database !== undefined && params.database !== '' ? params.database : user;
  if (!Object.hasOwn(databases, database)) {
    return { close: errorResponse('3D000', 'switchyard: no route for database "' + database + '"') };
  }
  return { remote: databases[database], data: data.slice(start) };
});

'use strict';
/*
 * The S3-compatible store of compose.yaml: s3rver (npm), which keeps every object as a file
 * under S3_DIRECTORY (a volume), so a restart of its container loses nothing. On top of it:
 *
 * - the buckets of S3_BUCKETS (comma-separated) are made at start, since sessionflow expects
 *   its bucket to exist;
 * - S3_ACCESS_KEY_ID is a known key besides s3rver's built-in S3RVER (s3rver refuses unknown
 *   keys; it does not check SigV4 signatures, so keep it on a private network);
 * - an object is written to a temporary file and renamed into place once all of it is on
 *   disk (and flushed), and a request body that ends early is refused: s3rver alone writes
 *   in place and answers before the write has finished, so a reader could see part of an
 *   object and a restart mid-write could leave a truncated one under the key;
 * - SIGTERM (what `docker stop` sends PID 1) lets the requests under way finish, then exits.
 *
 * `node serve.js --check`: exit 0 once every bucket answers (the health check).
 * S3_LOG_REQUESTS=1: s3rver's log of every request and error (off: it is one line a request).
 */

const crypto = require('crypto');
const fs = require('fs');
const fsp = require('fs/promises');
const http = require('http');
const path = require('path');
const { Transform } = require('stream');
const { pipeline } = require('stream/promises');

const PORT = Number(process.env.S3_PORT || 5000);
const ROOT = process.env.S3_DIRECTORY || '/var/lib/s3';
const BUCKETS = (process.env.S3_BUCKETS || '').split(',').filter(Boolean);
// The buckets live in ROOT/buckets; unfinished writes in ROOT/tmp, on the same file system so
// that renaming one into place is atomic.
const BUCKET_DIR = path.join(ROOT, 'buckets');
const TMP_DIR = path.join(ROOT, 'tmp');
const STOP_GRACE_MS = 8000;

function check() {
  const one = bucket =>
    new Promise(resolve => {
      const request = http.request(
        // GetBucketLocation: answers only for a bucket that exists, and lists nothing.
        { host: '127.0.0.1', port: PORT, path: `/${bucket}?location`, timeout: 2000 },
        response => {
          response.resume();
          if (response.statusCode !== 200) {
            console.error(`bucket ${bucket}: HTTP ${response.statusCode}`);
          }
          resolve(response.statusCode === 200);
        },
      );
      request.on('timeout', () => request.destroy(new Error('timed out')));
      request.on('error', error => {
        console.error(`bucket ${bucket}: ${error.message}`);
        resolve(false);
      });
      request.end();
    });
  return Promise.all(BUCKETS.map(one)).then(results => (results.every(Boolean) ? 0 : 1));
}

// Writes content (a stream) to target through a temporary file, renamed into place only when
// every byte is written and flushed. Returns the size and the md5 (hex) of what was written.
async function writeWhole(content, target) {
  const temporary = path.join(TMP_DIR, `${crypto.randomBytes(12).toString('hex')}.part`);
  const md5 = crypto.createHash('md5');
  let size = 0;
  const counter = new Transform({
    transform(chunk, encoding, callback) {
      md5.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });
  try {
    await pipeline(content, counter, fs.createWriteStream(temporary, { flush: true }));
    if (content instanceof http.IncomingMessage && !content.complete) {
      throw new Error('the request body ended before all of it was sent');
    }
    await fsp.mkdir(path.dirname(target), { recursive: true });
    await fsp.rename(temporary, target);
  } catch (error) {
    await fsp.rm(temporary, { force: true });
    throw error;
  }
  return { size, md5: md5.digest('hex') };
}

async function replaceFile(target, data) {
  const temporary = path.join(TMP_DIR, `${crypto.randomBytes(12).toString('hex')}.part`);
  await fsp.writeFile(temporary, data);
  await fsp.rename(temporary, target);
}

function patchStore(FilesystemStore, S3Object) {
  FilesystemStore.prototype.putObject = async function putObject(object) {
    const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
    const md5Path = this.getResourcePath(object.bucket, object.key, 'object.md5');
    const metadataPath = this.getResourcePath(object.bucket, object.key, 'metadata.json');
    const metadata = Object.fromEntries(
      Object.entries(object.metadata || {}).filter(
        ([name]) => S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-'),
      ),
    );
    // Whatever stops us midway, no stale md5 is left beside the new bytes: s3rver computes a
    // missing one from the object.
    await fsp.rm(md5Path, { force: true });
    const written = await writeWhole(object.content, objectPath);
    await replaceFile(md5Path, written.md5);
    await replaceFile(metadataPath, JSON.stringify(metadata, null, 2));
    return written;
  };

  FilesystemStore.prototype.putPart = async function putPart(bucket, uploadId, number, content) {
    const partPath = path.join(
      this.getResourcePath(bucket, undefined, 'uploads'),
      uploadId,
      number.toString(),
    );
    const written = await writeWhole(content, partPath);
    await replaceFile(`${partPath}.md5`, written.md5);
    return written;
  };
}

async function main() {
  const S3rver = require('s3rver');
  const AWSAccount = require('s3rver/lib/models/account');
  const S3Object = require('s3rver/lib/models/object');
  const FilesystemStore = require('s3rver/lib/stores/filesystem');

  patchStore(FilesystemStore, S3Object);
  if (process.env.S3_ACCESS_KEY_ID) {
    AWSAccount.DUMMY_ACCOUNT.createKeyPair(
      process.env.S3_ACCESS_KEY_ID,
      process.env.S3_SECRET_ACCESS_KEY || process.env.S3_ACCESS_KEY_ID,
    );
  }
  // What a write stopped by the last shutdown left behind was never acknowledged.
  await fsp.rm(TMP_DIR, { recursive: true, force: true });
  await fsp.mkdir(TMP_DIR, { recursive: true });
  await fsp.mkdir(BUCKET_DIR, { recursive: true });

  const server = new S3rver({
    address: '0.0.0.0',
    port: PORT,
    directory: BUCKET_DIR,
    // Path-style addressing only: the host name (`s3`) is not a bucket.
    vhostBuckets: false,
    silent: process.env.S3_LOG_REQUESTS !== '1',
    configureBuckets: BUCKETS.map(name => ({ name, configs: [] })),
  });
  await server.run();
  console.log(`S3 on :${PORT}, objects in ${BUCKET_DIR}, buckets: ${BUCKETS.join(', ') || 'none'}`);

  let stopping = false;
  // Once stopping, every answer closes its connection: clients keep theirs open between
  // requests, and an open one would hold the shutdown up.
  server.httpServer.on('request', (request, response) => {
    if (stopping) response.setHeader('Connection', 'close');
  });
  const stop = signal => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: finishing the requests under way`);
    server.httpServer.close(() => process.exit(0));
    server.httpServer.closeIdleConnections();
    setInterval(() => server.httpServer.closeIdleConnections(), 100).unref();
    setTimeout(() => {
      console.error(`requests still under way after ${STOP_GRACE_MS} ms; exiting`);
      process.exit(1);
    }, STOP_GRACE_MS).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

if (process.argv.slice(2).join(' ') === '--check') {
  check().then(code => process.exit(code));
} else {
  main().catch(error => {
    console.error(error);
    process.exit(1);
  });
}

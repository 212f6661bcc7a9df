/**
 * Upload and upload-reply jobs: one local file sent to a tus 1.0 server
 * (transfer/tus-upload.ts), resumable from the server's offset, through the job's
 * lease of the WAN path to the server (background uploads are paced as background
 * downloads are); then, for upload-reply jobs, the server's reply downloaded to the
 * job's reply path. A cancel terminates the upload on the server (tus DELETE).
 */
import type { Dispatcher } from 'undici'
import { withFields } from '@canopy/core'
import type { Logger } from '@canopy/core'
import { pace } from '../bandwidth/pacer.ts'
import { headProbe } from '../bandwidth/probe.ts'
import type { WanPaths } from '../bandwidth/wan-paths.ts'
import { TransferError } from '../errors.ts'
import type { PlainProgress } from '../transfer/plain-transfer.ts'
import { tusUpload } from '../transfer/tus-upload.ts'
import { TusErrorCode } from '../transfer/tus-protocol.ts'
import { fetchUploadReply, tusTerminate } from '../transfer/tus-reply.ts'
import { requestHeaders } from './http-options.ts'
import type { JobEntry, JobTable } from './job-table.ts'

export interface UploadComponents {
  table: JobTable
  wanPaths: WanPaths
  logger: Logger
  /** The job's network: the agent's pool, or one of its own for its proxy or TLS settings. */
  dispatcher: Dispatcher
  /**
   * The job's progress counter: bytesDone is what the server holds, restored at
   * recovery from `plainBytes`; its sources (bytes received) stay 0.
   */
  progress: PlainProgress
  /** Bytes moved: the no-progress clock, rate and progress events. */
  onProgress: () => void
}

/**
 * Sends the upload job's file, or resumes it where the server's offset says, then
 * fetches the reply of an upload-reply job. Throws a TransferError (transient ones
 * are retried by the runner, which calls this again: the persisted upload URL makes
 * it a resumption).
 */
export async function sendUpload (components: UploadComponents, entry: JobEntry, signal: AbortSignal): Promise<void> {
  const { table, wanPaths, dispatcher, progress } = components
  const job = entry.record
  const upload = job.upload!
  const file = job.files[0]
  const headers = requestHeaders(job.http)
  const logger = withFields(components.logger, { jobId: job.id })
  // The file's SHA-256 is recorded once the server holds the whole upload (and its digest matched, when it gave one).
  if (file.sha256 === undefined) {
    // Its share of the WAN path to the server: paced while the job is background, unpaced in the foreground.
    const lease = wanPaths.lease(file.url, () => job.priority, headProbe(dispatcher, file.url, headers), () => job.rateLimit)
    entry.lease = lease
    try {
      if (job.state !== 'transferring') await table.setState(entry, 'transferring')
      const sentBefore = upload.sentBytes ?? 0
      logger.info(upload.uploadUrl === undefined ? 'upload starting' : 'upload resuming', { url: upload.uploadUrl ?? file.url, bytes: file.plainBytes ?? 0 })
      const result = await tusUpload({ dispatcher, logger }, {
        endpoint: file.url,
        path: file.path,
        name: job.name,
        headers,
        ...(upload.uploadUrl !== undefined ? { uploadUrl: upload.uploadUrl } : {}),
        expectedFile: upload.file,
        signal,
        onCreated: async (uploadUrl) => {
          upload.uploadUrl = uploadUrl
          await table.persist(entry)
        },
        onProgress: (p) => {
          file.size = p.size
          progress.bytesDone = file.plainBytes = p.uploaded
          upload.sentBytes = sentBefore + p.sent
          components.onProgress()
        },
        beforeSend: async (bytes, s) => { await pace(lease.pacer, bytes, s) }
      })
      file.size = result.size
      file.sha256 = result.sha256
      progress.bytesDone = file.plainBytes = result.size
      upload.uploadUrl = result.uploadUrl
      if (result.serverSha256 !== undefined) upload.serverSha256 = result.serverSha256
      if (result.replyUrl !== undefined) upload.replyUrl = result.replyUrl
      await table.persist(entry)
      logger.info('upload complete', { uploadUrl: result.uploadUrl, bytes: result.size, sent: result.sent })
    } finally {
      lease.release()
      if (entry.lease === lease) entry.lease = undefined
    }
  }
  if (job.type === 'upload-reply' && upload.replyBytes === undefined) {
    if (upload.replyUrl === undefined) {
      throw new TransferError(TusErrorCode.Reply,
        `The server gave no reply for ${upload.uploadUrl ?? file.url}: it runs no upload handler (canopy origin --on-upload CMD). Send it as a plain upload, without --reply`,
        { transient: false, url: file.url })
    }
    upload.replyBytes = await fetchUploadReply({ dispatcher, logger }, { replyUrl: upload.replyUrl, path: upload.replyPath!, headers, signal })
    logger.info('upload reply written', { path: upload.replyPath, bytes: upload.replyBytes })
  }
  file.done = true
  await table.persist(entry)
}

/**
 * Terminates a cancelled job's upload on the server (tus DELETE), so that the
 * server frees its bytes at once rather than at expiry. Best effort: the server may
 * be unreachable, and then its expiry removes the upload.
 */
export async function terminateUpload (entry: JobEntry, logger: Logger): Promise<void> {
  const upload = entry.record.upload
  // A complete upload is the server's file now (the job may be cancelled while its reply is fetched): it stays.
  if (upload?.uploadUrl === undefined || entry.record.files[0].sha256 !== undefined) return
  const headers = requestHeaders(entry.record.http)
  await tusTerminate({}, { uploadUrl: upload.uploadUrl, headers }).catch((err: unknown) => {
    logger.warn('could not terminate the upload on the server; it expires there', { jobId: entry.id, uploadUrl: upload.uploadUrl, err: String(err) })
  })
}

using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace RestoreFs.Datastore;

/// <summary>
/// Decompresses a chunk and computes its SHA-256 at the same time: libzstd's decoder writes the chunk (straight into
/// the destination, no window copy) on the calling thread while a hashing thread digests the segments already written. A cold random read
/// costs one chunk decode; pipelined it takes about as long as the hash alone instead of decompression plus hash.
/// When no hashing thread is free, the caller hashes the rest itself — the pipeline never waits behind other work.
/// </summary>
internal static unsafe class HashPipeline
{
    private const int Segment = 512 * 1024;

    /// <summary>Compressed bytes given to the decoder at a time (zstd writes a block of up to 128 KiB as its input arrives).</summary>
    private const int InputPiece = 64 * 1024;
    private static readonly BlockingCollection<Job> Queue = StartWorkers();

    /// <summary>Smallest chunk worth the hand-off to another thread.</summary>
    public const int MinimumLength = 2 * Segment;

    /// <summary>
    /// Decompresses the single zstd frame <paramref name="frame"/> into <paramref name="destination"/> (which it must
    /// fill exactly) and writes SHA-256(destination ‖ <paramref name="suffix"/>) to <paramref name="digest"/>.
    /// Returns the bytes written; throws <see cref="InvalidDataException"/> with zstd's message.
    /// </summary>
    public static int DecompressAndHash(ReadOnlySpan<byte> frame, Span<byte> destination, ReadOnlySpan<byte> suffix, Span<byte> digest)
    {
        fixed (byte* dst = destination)
        {
            var job = Start(dst, destination.Length);
            int written;
            try
            {
                // Fed in pieces, so that the hashing thread can start on what is written while the rest decodes.
                using var decoder = new NativeZstd.Decoder(dst, destination.Length);
                for (var at = 0; at < frame.Length; at += InputPiece)
                {
                    decoder.Feed(frame.Slice(at, Math.Min(InputPiece, frame.Length - at)));
                    job.Written(decoder.Written);
                }

                if (!decoder.Ended)
                {
                    throw new InvalidDataException("truncated zstd frame");
                }

                written = decoder.Written;
            }
            catch
            {
                job.Abandon();
                throw;
            }

            job.Complete(written, suffix, digest);
            return written;
        }
    }

    /// <summary>
    /// Starts hashing a buffer that its writer fills front to back: report each new end with <see cref="Job.Written"/>,
    /// then call <see cref="Job.Complete"/> (or <see cref="Job.Abandon"/>). The buffer must stay pinned until then.
    /// </summary>
    public static Job Start(byte* data, int length)
    {
        var job = new Job(data, length);
        Queue.Add(job);
        return job;
    }

    private static BlockingCollection<Job> StartWorkers()
    {
        var queue = new BlockingCollection<Job>();
        for (var i = 0; i < Math.Max(1, Environment.ProcessorCount); i++)
        {
            var thread = new Thread(() => Work(queue)) { IsBackground = true, Name = $"chunk-hash-{i}" };
            thread.Start();
        }

        return queue;
    }

    private static void Work(BlockingCollection<Job> queue)
    {
        foreach (var job in queue.GetConsumingEnumerable())
        {
            if (Interlocked.CompareExchange(ref job.Owner, Job.Worker, Job.Unclaimed) != Job.Unclaimed)
            {
                continue;
            }

            try
            {
                while (true)
                {
                    var finished = Volatile.Read(ref job.Finished) == 1;
                    var available = Volatile.Read(ref job.Available);
                    if (available > job.Hashed)
                    {
                        job.Hash.AppendData(new ReadOnlySpan<byte>(job.Data + job.Hashed, available - job.Hashed));
                        job.Hashed = available;
                    }
                    else if (finished)
                    {
                        break;
                    }
                    else
                    {
                        job.Signal.Wait();
                    }
                }
            }
            finally
            {
                job.Done.Set();
            }
        }
    }

    /// <summary>One buffer being hashed while it is written (see <see cref="Start"/>).</summary>
    public sealed class Job(byte* data, int length)
    {
        public const int Unclaimed = 0;
        public const int Worker = 1;
        public const int Caller = 2;

        public readonly byte* Data = data;
        public readonly int Length = length;
        public readonly IncrementalHash Hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        public readonly SemaphoreSlim Signal = new(0);
        public readonly ManualResetEventSlim Done = new(false);
        public int Owner;
        public int Available;
        public int Finished;
        public int Hashed;

        /// <summary>The first <paramref name="available"/> bytes of the buffer are written and will not change.</summary>
        public void Written(int available)
        {
            Volatile.Write(ref Available, available);
            Signal.Release();
        }

        /// <summary>
        /// The writer is done after <paramref name="written"/> bytes: hashes what the helper has not (or everything, when
        /// no helper took the job) and writes SHA-256(buffer[..written] ‖ <paramref name="suffix"/>) to <paramref name="digest"/>.
        /// </summary>
        public void Complete(int written, ReadOnlySpan<byte> suffix, Span<byte> digest)
        {
            Stop();
            var start = Interlocked.CompareExchange(ref Owner, Caller, Unclaimed) == Unclaimed ? 0 : WaitForHelper();
            if (start < written)
            {
                Hash.AppendData(new ReadOnlySpan<byte>(Data + start, written - start));
            }

            Hash.AppendData(suffix);
            Hash.GetHashAndReset(digest);
            Dispose();
        }

        /// <summary>The writer failed: the helper stops and nothing is hashed any more.</summary>
        public void Abandon()
        {
            Stop();
            if (Interlocked.CompareExchange(ref Owner, Caller, Unclaimed) != Unclaimed)
            {
                WaitForHelper();
            }

            Dispose();
        }

        // Stops the helper from reading past what is valid (or at all) and takes over if it never started.
        private void Stop()
        {
            Volatile.Write(ref Finished, 1);
            Signal.Release();
        }

        private int WaitForHelper()
        {
            Done.Wait();
            return Hashed;
        }

        private void Dispose()
        {
            Hash.Dispose();
            Signal.Dispose();
            Done.Dispose();
        }
    }
}

namespace RestoreFs.TestSupport;

/// <summary>Reads /proc/self/mountinfo; lazily unmounts leftovers in test clean-up.</summary>
public static class MountTable
{
    public static bool IsMounted(string mountPoint)
    {
        var full = Path.GetFullPath(mountPoint).TrimEnd('/');
        return File.ReadLines("/proc/self/mountinfo").Any(line =>
        {
            var fields = line.Split(' ');
            return fields.Length > 4 && fields[4].Replace("\\040", " ", StringComparison.Ordinal) == full;
        });
    }

    public static void LazyUnmount(string mountPoint)
    {
        if (IsMounted(mountPoint))
        {
            ProcessRunner.Run("umount", ["-l", mountPoint], TimeSpan.FromSeconds(20));
        }
    }

    public static bool WaitUntil(Func<bool> condition, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (condition())
            {
                return true;
            }

            Thread.Sleep(50);
        }

        return condition();
    }
}

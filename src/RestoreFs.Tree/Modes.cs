namespace RestoreFs.Tree;

/// <summary>st_mode values used by the tree (type bits + read-only permissions).</summary>
public static class Modes
{
    public const uint Directory = 0x4000 | 0x16D;   // dr-xr-xr-x
    public const uint RegularFile = 0x8000 | 0x124; // -r--r--r--
    public const uint Symlink = 0xA000 | 0x1FF;     // lrwxrwxrwx

    public const uint TypeMask = 0xF000;
}

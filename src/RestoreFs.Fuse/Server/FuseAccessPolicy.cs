namespace RestoreFs.Fuse;

/// <summary>
/// Who gets answers from a mount. The kernel's own check (mount owner only, unless <c>allow_other</c>) comes first;
/// this one runs on every request, because a mount may carry <c>allow_other</c> only to let root in.
/// </summary>
public sealed record FuseAccessPolicy(uint OwnerUid, bool AllowOther)
{
    /// <summary>The mount owner and root always; other users only when the mount allows them.</summary>
    public bool Allows(uint uid) => AllowOther || uid == OwnerUid || uid == 0;

    /// <summary>Whether <paramref name="uid"/> may cause side effects (attach devices, start VMs): owner and root only.</summary>
    public bool IsPrivileged(uint uid) => uid == OwnerUid || uid == 0;
}

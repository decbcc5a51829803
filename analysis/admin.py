"""Admin: download a study's export as a zip of CSV files (the same export as `manage.py study_export`)."""
import tempfile
import zipfile
from pathlib import Path

from django.contrib import admin, messages
from django.http import FileResponse

from studies.models import Study

from .export import study_export


@admin.action(description="Download export (CSV zip)", permissions=["view"])
def download_export(modeladmin, request, queryset):
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one study to export.", messages.WARNING)
        return None
    slug = queryset.get().slug
    archive = tempfile.TemporaryFile()  # gone when FileResponse closes it
    with tempfile.TemporaryDirectory(prefix="teachback-export-") as folder:
        study_export(slug=slug, out=folder, fmt="csv")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(folder).iterdir()):
                zf.write(path, f"{slug}/{path.name}")
    archive.seek(0)
    return FileResponse(archive, as_attachment=True, filename=f"{slug}-export-csv.zip",
                        content_type="application/zip")


# `studies.admin` registers StudyAdmin (and comes first in INSTALLED_APPS): add the action to it here,
# so the read side stays in `analysis`.
if admin.site.is_registered(Study):
    _study_admin = admin.site.get_model_admin(Study)
    _study_admin.actions = [*(_study_admin.actions or []), download_export]

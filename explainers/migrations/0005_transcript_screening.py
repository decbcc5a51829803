import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('explainers', '0004_reply_cut_off_and_call_strategy'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='TranscriptScreening',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('mode', models.CharField(choices=[('redact', 'Redact'), ('approve', 'Approve')], max_length=8)),
                ('status', models.CharField(choices=[('pending', 'Pending'), ('passed', 'Passed'), ('rejected', 'Rejected')], max_length=8)),
                ('rules_version', models.PositiveSmallIntegerField(help_text='the version of the redaction rule applied')),
                ('turns', models.JSONField(help_text='what a yoked participant reads: [{turn, author, text}] with text redacted')),
                ('redactions', models.JSONField(blank=True, default=dict, help_text='replacements made, by kind: link, email, phone, name')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('decided_at', models.DateTimeField(blank=True, help_text='when it passed or was rejected', null=True)),
                ('conversation', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='screening', to='explainers.conversation')),
                ('decided_by', models.ForeignKey(blank=True, help_text='the researcher who approved or rejected it (empty: the automatic screen)', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'indexes': [models.Index(fields=['status', 'decided_at'], name='screening_status_decided')],
            },
        ),
    ]

"""languages: the reader's language, consent wordings per language, the operator's texts and look

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00

Existing subscribers, sign-ups and consent wordings were all English: they get ``en``.
Consent versions count per language from now on (the English ones keep their numbers).
"""
from alembic import op
import sqlalchemy as sa
import newsletter.models


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# SQLite reflects the unique constraints of 0001 without names; name them to drop them.
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique_names():
    if op.get_bind().dialect.name == "postgresql":
        return "consent_text_version_key", "consent_text_sha256_key"
    return "uq_consent_text_version", "uq_consent_text_sha256"


def upgrade():
    for table in ("subscriber", "pending_signup"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column('language', sa.String(length=8), server_default='en', nullable=False)
            )

    version_name, sha_name = _old_unique_names()
    with op.batch_alter_table('consent_text', naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.add_column(
            sa.Column('language', sa.String(length=8), server_default='en', nullable=False)
        )
        batch_op.drop_constraint(version_name, type_='unique')
        batch_op.drop_constraint(sha_name, type_='unique')
        batch_op.create_unique_constraint('uq_consent_language_version', ['language', 'version'])
        batch_op.create_unique_constraint('uq_consent_language_sha256', ['language', 'sha256'])

    op.create_table('form_text',
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('intro', sa.Text(), nullable=True),
    sa.Column('consent_text_id', sa.Integer(), nullable=True),
    sa.Column('updated_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['consent_text_id'], ['consent_text.id'], ),
    sa.PrimaryKeyConstraint('language')
    )
    op.create_table('look',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('logo', sa.LargeBinary(), nullable=True),
    sa.Column('logo_type', sa.String(length=32), nullable=True),
    sa.Column('logo_sha256', sa.String(length=64), nullable=True),
    sa.Column('accent', sa.String(length=7), nullable=True),
    sa.Column('updated_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade():
    """Back to one language: only possible while every wording is English."""
    op.drop_table('look')
    op.drop_table('form_text')
    version_name, sha_name = _old_unique_names()
    with op.batch_alter_table('consent_text') as batch_op:
        batch_op.drop_constraint('uq_consent_language_sha256', type_='unique')
        batch_op.drop_constraint('uq_consent_language_version', type_='unique')
        batch_op.create_unique_constraint(version_name, ['version'])
        batch_op.create_unique_constraint(sha_name, ['sha256'])
        batch_op.drop_column('language')
    with op.batch_alter_table('pending_signup') as batch_op:
        batch_op.drop_column('language')
    # SQLite rebuilds the table: keep AUTOINCREMENT, so a VERP tag's reader id is never reused.
    with op.batch_alter_table('subscriber', table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('language')

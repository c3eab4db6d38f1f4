"""editions in several languages: campaign_translation (one row per campaign and language)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 10:00:00

The main version stays in the campaign row (the fallback language); each translation is
a row of its own, gone with its campaign. Existing campaigns get no translations.
"""
from alembic import op
import sqlalchemy as sa
import newsletter.models


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('campaign_translation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('html', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('text_is_derived', sa.Boolean(), nullable=False),
    sa.Column('source', sa.Text(), nullable=True),
    sa.Column('source_format', sa.String(length=16), nullable=False),
    sa.Column('created_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('campaign_id', 'language', name='uq_campaign_translation_language')
    )
    with op.batch_alter_table('campaign_translation') as batch_op:
        batch_op.create_index(
            batch_op.f('ix_campaign_translation_campaign_id'), ['campaign_id'], unique=False
        )


def downgrade():
    with op.batch_alter_table('campaign_translation') as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaign_translation_campaign_id'))
    op.drop_table('campaign_translation')
